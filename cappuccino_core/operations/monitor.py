"""`cappuccino monitor` (cappuccino-monitor.timer, every 5 minutes): checks, one alert per
incident.

Each check returns the incidents it sees now, keyed (`training-stalled:<study>`, ...). An
incident is alerted when it first appears and recorded as open in `cappuccino_events`; while
it stays, later runs say nothing; when it is gone, it is recorded as resolved and said once
(and a later return is a new incident). A live trader's stop exits, degradations and
recoveries are events already: each is alerted once, a run's stop exits of one trader in one
message. A replay never alerts. Every run writes the metrics file, also when its checks fail.
"""

from __future__ import annotations

import itertools
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..common.alerts import send_alert
from ..common.config import Config
from ..common.errors import CappuccinoError, first_line
from ..ensemble.manifest import current_manifest, ensembles_dir
from ..storage.database import (
    app_engine,
    events,
    record_event,
)
from ..storage.optuna_db import has_optuna_tables, training_progress
from ..trading.journal import Journal, live_traders
from .status import add_problem, collect

log = logging.getLogger(__name__)
SOURCE = "monitor"


@dataclass(frozen=True)
class Incident:
    key: str
    severity: str
    message: str
    trader: str | None = None  # the trader it concerns, named in the alert


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
    if manifest.broken:  # unreadable: nothing else about it can be judged
        return [Incident("ensemble-broken", "critical", f"ensemble v{manifest.version} is "
                         "broken: " + "; ".join(manifest.broken))]
    out = []
    if manifest.fallback:
        out.append(Incident("ensemble-fallback", "warning",
                            f"no agent is good enough: ensemble v{manifest.version} is the "
                            f"fallback ({manifest.fallback}); {manifest.reason}"))
    age = _now() - manifest.created_at
    if age > timedelta(hours=cfg.monitor.ensemble_max_age_hours):
        out.append(Incident("ensemble-old", "warning",
                            f"ensemble v{manifest.version} is {age.total_seconds() / 3600:.0f} h"
                            f" old (limit {cfg.monitor.ensemble_max_age_hours:.0f} h)"))
    if cfg.active_study and manifest.study != cfg.active_study:
        out.append(Incident("ensemble-not-following", "warning",
                            f"ensemble v{manifest.version} follows {manifest.study}, the "
                            f"active study is {cfg.active_study}"))
    return out


def check_trader(engine: Engine, cfg: Config, name: str) -> list[Incident]:
    journal = Journal(engine, name)
    last_bar, latest, peak = journal.last_bar(), journal.last_snapshot(), journal.peak_equity()
    out = []
    if last_bar:
        bar = pd.Timedelta(seconds=cfg.bar_seconds)
        due = pd.Timestamp(last_bar) + 2 * bar + pd.Timedelta(seconds=cfg.data.closed_bar_delay_s)
        if pd.Timestamp(_now()) > due + pd.Timedelta(minutes=5):
            out.append(Incident(f"trader-behind:{name}", "error",
                                f"trader {name}: last bar processed {last_bar}, more than one "
                                "bar behind", trader=name))
    if latest is not None:  # two aggregates: the history is never read whole every 5 min
        now = latest.equity
        if now <= peak * (1 - cfg.monitor.drawdown_alert_pct):
            out.append(Incident(f"drawdown:{name}", "error",
                                f"trader {name}: equity {now:,.2f} is {1 - now / peak:.1%} below "
                                f"its peak {peak:,.2f}", trader=name))
    return out


def check_units(units: dict) -> list[Incident]:
    """A failed unit is an incident until it runs again (its own alert, with its journal lines,
    comes from cappuccino-alert@ as it fails: the same key, so it is not said twice)."""
    return [Incident(f"unit-failed:{name}", "error", f"{name} has failed ({u['state']})")
            for name, u in units.items() if u["state"].startswith("failed")]


def check_disk(cfg: Config) -> list[Incident]:
    path = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    usage = shutil.disk_usage(path)
    free = usage.free / usage.total
    if free < cfg.monitor.min_free_disk_pct:
        return [Incident("disk", "error", f"disk of {cfg.state_dir} is {1 - free:.0%} full")]
    return []


def _open_incidents(engine: Engine) -> dict[str, str]:
    """{key: message} of the incidents alerted and not resolved."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.incident_key, events.c.kind, events.c.message)
                            .where(events.c.source == SOURCE, events.c.kind.in_(
                                ["incident", "resolved"])).order_by(events.c.id)).all()
    state: dict[str, str | None] = {}
    for key, kind, message in rows:
        state[key] = message if kind == "incident" else None
    return {k: m for k, m in state.items() if m is not None}


def open_incident(engine: Engine, incident: Incident) -> None:
    record_event(engine, SOURCE, incident.severity, "incident", incident.message,
                 incident_key=incident.key)


def alerted_recently(engine: Engine, key: str, within: timedelta) -> bool:
    """Whether incident `key` is open and was alerted (or said again) within `within`."""
    if key not in _open_incidents(engine):
        return False
    with engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(events.c.ts)).where(
            events.c.source == SOURCE, events.c.incident_key == key,
            events.c.kind == "incident")).scalar()
    last = last if last.tzinfo else last.replace(tzinfo=timezone.utc)
    return _now() - last < within


# Trader events alerted once each: (event kind, alert type, severity).
TRADER_EVENTS = {"stop_exit": ("stop-exit", "warning"),
                 "degraded": ("trader-degraded", "error"),
                 "recovered": ("trader-recovered", "info")}


def _trader_events_not_alerted(engine: Engine, live: set[str]) -> list:
    """Stop exits, degradations and recoveries of the `live` traders not alerted yet (a
    replay's are history: never alerted)."""
    with engine.connect() as conn:
        alerted = set(conn.execute(sa.select(events.c.incident_key).where(
            events.c.source == SOURCE,
            events.c.kind.in_(["alerted", "stop-alerted"]))).scalars())  # (older releases')
        rows = conn.execute(sa.select(events.c.id, events.c.source, events.c.kind,
                                      events.c.message).where(
            events.c.kind.in_(list(TRADER_EVENTS))).order_by(events.c.id)).all()
    return [r for r in rows if r.source in live
            and f"event:{r.id}" not in alerted and f"stop:{r.id}" not in alerted]


def run_checks(cfg: Config, engine: Engine, units: dict | None = None) -> list[Incident]:
    """Check everything, alert new incidents once, and say once when each is resolved; alert
    the live traders' stop exits (one message per trader and run), degradations and
    recoveries. `units`: systemd's view (`status.collect`'s), for failed units. Returns the
    new incidents."""
    seen: list[Incident] = []
    checks = [lambda: check_training(engine, cfg), lambda: check_ensemble(engine, cfg),
              lambda: check_disk(cfg), lambda: check_units(units or {})]
    live = live_traders(engine)
    checks += [lambda name=name: check_trader(engine, cfg, name) for name in live]
    failed = []
    for check in checks:
        try:
            seen += check()
        except Exception as e:  # noqa: BLE001 - one broken check must not hide the others
            log.exception("monitor check failed: %s", e)
            failed.append(f"{type(e).__name__}: {e}")
    already = _open_incidents(engine)
    new = [i for i in seen if i.key not in already]
    for incident in new:
        send_alert(cfg, incident.message, incident.message, incident.severity, "incident",
                   trader=incident.trader)
        open_incident(engine, incident)
    still = {i.key for i in seen}
    for key, message in already.items():
        if key not in still:
            send_alert(cfg, f"resolved: {key}", f"resolved: {message}", "info", "resolved")
            record_event(engine, SOURCE, "info", "resolved", f"resolved: {key}",
                         incident_key=key)
    pending = sorted(_trader_events_not_alerted(engine, set(live)),
                     key=lambda r: (r.source, r.kind, r.id))
    for (trader, kind), rows in itertools.groupby(pending, lambda r: (r.source, r.kind)):
        rows = list(rows)
        alert_kind, severity = TRADER_EVENTS[kind]
        title = (f"{len(rows)} stop exit(s) of trader {trader}" if kind == "stop_exit"
                 else f"trader {trader}: {rows[-1].message}")
        send_alert(cfg, title, "\n".join(r.message for r in rows), severity, alert_kind,
                   trader=trader)
        for r in rows:
            record_event(engine, SOURCE, "info", "alerted", r.message,
                         incident_key=f"event:{r.id}")
    if failed:
        raise ChecksFailed("; ".join(failed))
    return new


REPEAT_AFTER = timedelta(hours=1)  # a unit that keeps failing is said again after this


def alert_unit_failure(cfg: Config, unit: str, env=None) -> str:
    """What cappuccino-alert@<unit> runs when `unit` fails (OnFailure=): one alert with the
    unit's result, exit status and last journal lines, once per incident: more failures of a
    unit whose failure is open (it has not run well since) are recorded, not sent, for
    `REPEAT_AFTER`; then it is said again. The monitor says "resolved" once the unit runs
    again. Returns what it did."""
    import os
    env = os.environ if env is None else env
    # systemd passes the failed unit's outcome to OnFailure= units (systemd.exec(5),
    # "Environment variables in spawned processes": MONITOR_SERVICE_RESULT, ...)
    result = env.get("MONITOR_SERVICE_RESULT", "unknown")
    status = f"{env.get('MONITOR_EXIT_CODE', '?')} {env.get('MONITOR_EXIT_STATUS', '?')}"
    invocation = env.get("MONITOR_INVOCATION_ID")
    lines = _journal_tail(unit, invocation)
    incident = Incident(f"unit-failed:{unit}", "error",
                        f"{unit} failed: result {result}, exit {status}")
    try:
        engine = app_engine(cfg)
        if alerted_recently(engine, incident.key, REPEAT_AFTER):
            record_event(engine, SOURCE, "warning", "repeated", incident.message,
                         incident_key=incident.key)
            return f"{unit} failed again; its failure is alerted already (open incident)"
    except Exception as e:  # noqa: BLE001 - without the database, alert rather than stay silent
        log.warning("could not check for an open incident (%s): alerting", first_line(e))
        engine = None
    send_alert(cfg, incident.message, f"{incident.message}\nlast journal lines:\n{lines}",
               "error", "unit-failed")
    if engine is not None:
        open_incident(engine, incident)
    return f"alerted: {incident.message}"


def _journal_tail(unit: str, invocation: str | None, n: int = 15) -> str:
    """The unit's last journal lines (of the failed run where systemd named it)."""
    import subprocess
    match = [f"_SYSTEMD_INVOCATION_ID={invocation}"] if invocation else ["-u", unit]
    try:
        out = subprocess.run(["journalctl", "--no-pager", "-o", "short-iso", "-n", str(n),
                              *match], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(the journal could not be read: {first_line(e)})"
    text = out.stdout.strip()
    if out.returncode != 0 or not text or text.startswith("-- No entries"):
        return f"(no journal lines readable here: {out.stderr.strip() or 'none'}; see " \
               f"journalctl -u {unit})"
    return text


class ChecksFailed(CappuccinoError):
    """Some checks could not run (their incidents may be unknown)."""
    label = "monitor checks failed"


def run_monitor(cfg: Config, say=print) -> int:
    """What the monitor service runs every 5 minutes: the checks and their alerts, the metrics
    file, the daily summary. The metrics are written whatever happens: a run whose checks fail
    writes health critical with the reason, never leaves the last good file in place. 0, or
    1 when the checks could not run."""
    from .metrics import render, textfile_path, write_textfile
    from .summary import send_if_due
    status = collect(cfg)
    engine = None
    try:
        engine = app_engine(cfg)
        new = run_checks(cfg, engine, status["systemd"]["units"])
        for incident in new:
            say(f"{incident.severity}: {incident.message}")
        say(f"{len(new)} new incident(s)")
        failure = None
    except Exception as e:  # noqa: BLE001 - said in the metrics and the exit code
        failure = f"the monitor's checks could not run: {type(e).__name__}: {first_line(e)}"
        log.error(failure)
        add_problem(status, "critical", failure)
    say(f"metrics: {write_textfile(textfile_path(cfg), render(status, checks_ok=failure is None))}")
    if failure is None and send_if_due(cfg, engine, status=status):
        say("daily summary sent")
    return 0 if failure is None else 1
