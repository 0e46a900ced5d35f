"""`cappuccino monitor` (cappuccino-monitor.timer, every 5 minutes): checks, one alert per
incident.

Each check returns the incidents it sees now, keyed (`training-stalled:<study>`, ...). An
incident is alerted when it first appears and recorded as open in `cappuccino_events`; while
it stays, later runs say nothing; when it is gone, it is recorded as resolved (and a later
return is a new incident). Stop exits are events already: each one is alerted once.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .alerts import send_alert
from .config import Config
from .ensemble.publish import current_manifest, ensembles_dir
from .optuna_db import has_optuna_tables, training_progress
from .storage import equity_snapshots, events, record_event, trader_state

log = logging.getLogger(__name__)
SOURCE = "monitor"


@dataclass(frozen=True)
class Incident:
    key: str
    severity: str
    message: str


def _now() -> datetime:
    return datetime.now(timezone.utc)


def check_training(engine: Engine, cfg: Config) -> list[Incident]:
    study = cfg.active_study
    if not study or not has_optuna_tables(engine):
        return []  # nothing trained in this database yet: nothing can have stalled
    p = training_progress(engine, study)
    running, finished, target = p["running"], p["finished"], p["target"]
    last_done, last_start = p["last_complete"], p["last_start"]
    out = []
    if target is not None and finished >= int(target):
        out.append(Incident(f"study-target:{study}", "info",
                            f"study {study} reached its target of {int(target)} trials"))
    if running:
        last = pd.Timestamp(last_done or last_start).tz_localize("UTC")
        idle = _now() - last.to_pydatetime()
        if idle > timedelta(minutes=cfg.monitor.training_stall_minutes):
            out.append(Incident(f"training-stalled:{study}", "warning",
                                f"training of {study} stalled: {running} trial(s) running, "
                                f"none finished for {idle.total_seconds() / 60:.0f} min"))
    return out


def check_ensemble(engine: Engine, cfg: Config) -> list[Incident]:
    manifest = current_manifest(ensembles_dir(cfg))
    if manifest is None:
        return []
    out = []
    if manifest.get("fallback"):
        out.append(Incident("ensemble-fallback", "warning",
                            f"no agent is good enough: ensemble v{manifest['version']} is the "
                            f"fallback ({manifest['fallback']}); {manifest.get('reason')}"))
    age = _now() - datetime.fromisoformat(manifest["created_at"])
    if age > timedelta(hours=cfg.monitor.ensemble_max_age_hours):
        out.append(Incident("ensemble-old", "warning",
                            f"ensemble v{manifest['version']} is {age.total_seconds() / 3600:.0f} h"
                            f" old (limit {cfg.monitor.ensemble_max_age_hours:.0f} h)"))
    if cfg.active_study and manifest["study"] != cfg.active_study:
        out.append(Incident("ensemble-not-following", "warning",
                            f"ensemble v{manifest['version']} follows {manifest['study']}, the "
                            f"active study is {cfg.active_study}"))
    return out


def check_trader(engine: Engine, cfg: Config, name: str = "paper") -> list[Incident]:
    with engine.connect() as conn:
        last_bar = conn.execute(sa.select(trader_state.c.value).where(
            trader_state.c.trader == name, trader_state.c.key == "last_bar")).scalar()
        equity = conn.execute(sa.select(equity_snapshots.c.equity).where(
            equity_snapshots.c.trader == name)).scalars().all()
    out = []
    if last_bar:
        bar = pd.Timedelta(seconds=cfg.bar_seconds)
        due = pd.Timestamp(last_bar) + 2 * bar + pd.Timedelta(seconds=cfg.data.closed_bar_delay_s)
        if pd.Timestamp(_now()) > due + pd.Timedelta(minutes=5):
            out.append(Incident("trader-behind", "error",
                                f"trader {name}: last bar processed {last_bar}, more than one "
                                "bar behind"))
    if equity:
        peak, now = max(equity), equity[-1]
        if now <= peak * (1 - cfg.monitor.drawdown_alert_pct):
            out.append(Incident("drawdown", "error",
                                f"trader {name}: equity {now:,.2f} is {1 - now / peak:.1%} below "
                                f"its peak {peak:,.2f}"))
    return out


def check_disk(cfg: Config) -> list[Incident]:
    path = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    usage = shutil.disk_usage(path)
    free = usage.free / usage.total
    if free < cfg.monitor.min_free_disk_pct:
        return [Incident("disk", "error", f"disk of {cfg.state_dir} is {1 - free:.0%} full")]
    return []


def _open_incidents(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.incident_key, events.c.kind).where(
            events.c.source == SOURCE).order_by(events.c.id)).all()
    state: dict[str, bool] = {}
    for key, kind in rows:
        state[key] = kind == "incident"
    return {k for k, is_open in state.items() if is_open}


def _stop_exits_not_alerted(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        alerted = set(conn.execute(sa.select(events.c.incident_key).where(
            events.c.source == SOURCE, events.c.kind == "stop-alerted")).scalars())
        rows = conn.execute(sa.select(events.c.id, events.c.message).where(
            events.c.kind == "stop_exit")).all()
    return [(i, m) for i, m in rows if f"stop:{i}" not in alerted]


def run_checks(cfg: Config, engine: Engine) -> list[Incident]:
    """Check everything, alert new incidents once, close the ones gone. Returns new ones."""
    seen: list[Incident] = []
    for check in (lambda: check_training(engine, cfg), lambda: check_ensemble(engine, cfg),
                  lambda: check_trader(engine, cfg), lambda: check_disk(cfg)):
        try:
            seen += check()
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            log.exception("monitor check failed: %s", e)
    already = _open_incidents(engine)
    new = [i for i in seen if i.key not in already]
    for incident in new:
        send_alert(cfg, incident.message, incident.message, incident.severity)
        record_event(engine, SOURCE, incident.severity, "incident", incident.message,
                     incident_key=incident.key)
    for key in already - {i.key for i in seen}:
        record_event(engine, SOURCE, "info", "resolved", f"resolved: {key}", incident_key=key)
    for event_id, message in _stop_exits_not_alerted(engine):
        send_alert(cfg, "stop exit", message, "warning")
        record_event(engine, SOURCE, "info", "stop-alerted", message,
                     incident_key=f"stop:{event_id}")
    return new
