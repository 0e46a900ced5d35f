"""`cappuccino status`: one screen on the whole operation (and `--json` for scripts).

Sections grow with the product; each is computed independently, so one broken part (say, an
unreachable database) is shown as such instead of hiding the rest. `health` sums it up for a
monitoring system: its level is also the exit code (0 ok, 1 warning, 2 critical). The JSON's
shape is `docs/status.schema.json` (`schema_version` changes when it does).
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pandas as pd
import sqlalchemy as sa

from ..common.config import Config
from ..ensemble.manifest import (
    Manifest,
    current_manifest,
    ensembles_dir,
    version_name,
    version_problems,
)
from ..storage.database import (
    StorageEmpty,
    deploy_decisions,
    find_events,
    read_engine,
)
from ..storage.optuna_db import completed_since, study_summaries
from ..trading.journal import Journal, replay_traders, traders_with_data

SCHEMA_VERSION = 2  # 2: traders have `mode` (live | replay) instead of `running`
LEVELS = ("ok", "warning", "critical")  # their index is the exit code
NOTHING_YET = "nothing to read yet"


def collect(cfg: Config) -> dict:
    out: dict = {"schema_version": SCHEMA_VERSION,
                 "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "active_study": cfg.active_study, "storage": cfg.storage_url.split("@")[-1],
                 "error": None, "systemd": _systemd(), "training": None, "ensemble": None,
                 "traders": {}, "deployer": None}
    try:
        engine = read_engine(cfg)
        out["training"] = _training(engine, cfg)
        out["ensemble"] = _ensemble(engine, cfg)
        replays = replay_traders(engine)
        out["traders"] = {name: _trader(engine, cfg, name, name in replays)
                          for name in traders_with_data(engine)}
        out["deployer"] = _deployer(engine)
    except StorageEmpty as e:
        out["error"] = f"{NOTHING_YET}: {e}"
    except sa.exc.SQLAlchemyError as e:
        out["error"] = f"storage unreachable: {e.__class__.__name__}: {str(e).splitlines()[0]}"
    out["health"] = health(out, cfg)
    return out


def health(s: dict, cfg: Config) -> dict:
    """The problems an operator must know about, each ok/warning/critical, and the worst."""
    problems: list[dict] = []

    def say(level: str, message: str) -> None:
        problems.append({"level": level, "message": message})

    if s["error"]:  # nothing run yet is a warning; a storage that cannot be read is critical
        say("warning" if s["error"].startswith(NOTHING_YET) else "critical", s["error"])
    e = s["ensemble"] or {}
    if s["ensemble"] is not None and e.get("version") is None:
        say("warning", "no ensemble published yet")
    if e.get("fallback"):
        say("warning", f"no agent is good enough: the trader is on the fallback "
                       f"({e['fallback']}); {e['fallback_reason']}")
    if e.get("broken"):
        say("critical", f"ensemble v{e['version']} is broken: " + "; ".join(e["broken"]))
    if e.get("version") is not None and not e["follows_active_study"]:
        say("critical", f"the ensemble follows {e['study']}, the active study is "
                        f"{s['active_study']}")
    if e.get("members_with_other_risk_rules"):
        say("warning", f"{e['members_with_other_risk_rules']} ensemble member(s) trained under "
                       "other risk rules than configured")
    if e.get("age_hours", 0) > cfg.monitor.ensemble_max_age_hours:
        say("warning", f"the ensemble is {e['age_hours']:.0f} h old")
    if (e.get("last_sync") or {}).get("needed"):
        say("warning", f"{e['last_sync']['needed']} more eligible trial(s) needed")
    for name, t in s["traders"].items():
        if t.get("lag_bars", 0) > 2:
            say("critical", f"trader {name} is {t['lag_bars']:.0f} bars behind")
    for name, u in s["systemd"]["units"].items():
        if u["state"].startswith("failed"):
            say("critical", f"{name} has failed")
        elif u["restarts"]:
            say("warning", f"{name} restarted {u['restarts']} time(s)")
    worst = max((LEVELS.index(p["level"]) for p in problems), default=0)
    return {"level": LEVELS[worst], "problems": problems}


def add_problem(s: dict, level: str, message: str) -> None:
    """One more problem in a collected status, its health level raised to match."""
    s["health"]["problems"].append({"level": level, "message": message})
    worst = max(LEVELS.index(s["health"]["level"]), LEVELS.index(level))
    s["health"]["level"] = LEVELS[worst]


def _systemd() -> dict:
    """Each cappuccino unit's state and restart count, or why they cannot be known here."""
    def unknown(reason: str) -> dict:
        return {"available": False, "reason": reason, "units": {}}
    if not shutil.which("systemctl"):
        return unknown("systemctl not found")
    listed = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend",
                             "cappuccino*"], capture_output=True, text=True)
    if listed.returncode != 0:
        return unknown("systemd is not running here")
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    units = {}
    for name in names:
        show = subprocess.run(["systemctl", "show", name, "-p", "ActiveState,SubState,NRestarts"],
                              capture_output=True, text=True).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        units[name] = {"state": f"{props.get('ActiveState')}/{props.get('SubState')}",
                       "restarts": int(props.get("NRestarts") or 0)}
    return {"available": True, "reason": None, "units": units}


def _trader(engine, cfg: Config, name: str, replay: bool = False) -> dict:
    journal = Journal(engine, name)
    snaps = journal.equity_rows(newest=200)
    last_bar, peak = journal.last_bar(), journal.peak_equity()
    since = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=24)).to_pydatetime()
    recent = [d.quiet for d in journal.decision_rows(start=since)]
    latest = snaps[-1]  # (only traders with equity history are asked about)
    day = pd.Timestamp(latest.ts).normalize()
    today = [s for s in snaps if pd.Timestamp(s.ts) >= day][::-1]
    info = {"mode": "replay" if replay else "live", "equity": latest.equity,
            "positions": len(latest.positions),
            "pnl_today": latest.equity - today[-1].equity, "last_bar": last_bar,
            "peak_equity": peak, "drawdown": max(0.0, 1 - latest.equity / peak) if peak else 0.0,
            # assets that printed no bar, flat-filled at their last close (last 24 h)
            "quiet_bars_24h": sum(len(q or []) for q in recent)}
    if last_bar and not replay:  # a replay is history: never behind
        closed = pd.Timestamp(last_bar) + pd.Timedelta(seconds=cfg.bar_seconds)
        lag = pd.Timestamp.now(tz="UTC") - closed
        info["lag_bars"] = round(lag.total_seconds() / cfg.bar_seconds, 2)
    return info


def _deployer(engine) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(deploy_decisions).order_by(
            deploy_decisions.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return {"ts": row.ts.isoformat(), "study": row.study, "trial_id": row.candidate_trial_id,
            "passed": row.passed, "promoted": row.promoted, "reasons": row.reasons}


def _training(engine, cfg: Config) -> dict:
    studies = study_summaries(engine)
    active = studies.get(cfg.active_study or "", None)
    since = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    recent = completed_since(engine, cfg.active_study, since) if active else 0
    return {"study_exists": active is not None, "counts": (active or {}).get("counts", {}),
            "best": (active or {}).get("best"), "trials_last_hour": recent,
            "other_studies": sorted(set(studies) - {cfg.active_study})}


def _ensemble(engine, cfg: Config) -> dict:
    manifest = current_manifest(ensembles_dir(cfg))
    last_sync = next(iter(find_events(engine, source="ensemble-sync", newest=1)), None)
    info: dict = {"last_sync": None if last_sync is None else {
        "ts": last_sync.ts.isoformat(), "kind": last_sync.kind, "message": last_sync.message,
        "needed": (last_sync.data or {}).get("needed")}}
    if manifest is None:
        return info | {"version": None}
    values = [m.value for m in manifest.members]
    return info | {
        "version": manifest.version, "study": manifest.study,
        "follows_active_study": manifest.study == cfg.active_study,
        "age_hours": round(manifest.age_hours(), 2),
        "members": len(values), "best_value": max(values, default=None),
        "mean_value": sum(values) / len(values) if values else None,
        "fallback": manifest.fallback, "fallback_reason": manifest.reason,
        "members_with_other_risk_rules": sum(
            bool(m.spec.risk_differences(cfg)) for m in manifest.members),
        "broken": version_health(engine, cfg, manifest)}


def version_health(engine, cfg: Config, manifest: Manifest) -> list[str]:
    """Why the current version is broken ([] if it is not): its files on disk, and a refusal
    by the trader since it was published (weights that do not load)."""
    root = ensembles_dir(cfg)
    name = version_name(manifest.version)
    problems = version_problems(root / name)
    created = manifest.created_at
    refusals = [(e.ts, e.message, e.data)
                for e in find_events(engine, kind="ensemble_refused", newest=20)]
    for ts, message, data in refusals:
        when = ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        if name in (data or {}).get("versions", []) and when >= created:
            problems.append(f"the trader refused it: {message}")
            break
    return problems


def render(s: dict) -> str:
    lines = [f"active study: {s['active_study'] or '(none: cappuccino study activate NAME)'}"
             f"   storage: {s['storage']}   health: {s['health']['level'].upper()}"]
    lines += [f"  {p['level']}: {p['message']}" for p in s["health"]["problems"]]
    if s["error"]:
        return "\n".join(lines)
    t = s["training"]
    c = t["counts"]
    if not t["study_exists"]:
        lines.append("training: the active study does not exist in the storage yet")
    else:
        best = f"{t['best']:.3f}" if t.get("best") is not None else "-"
        lines.append(f"training: {c['COMPLETE']} complete, {c['RUNNING']} running, "
                     f"{c['FAIL']} failed, {c['PRUNED']} pruned; best {best}; "
                     f"{t['trials_last_hour']} finished in the last hour")
    e = s["ensemble"]
    if e["version"] is None:
        lines.append("ensemble: none published yet")
    elif e.get("fallback"):
        lines.append(f"ensemble: v{e['version']} of study {e['study']} is the FALLBACK "
                     f"({e['fallback']}): no agent is good enough; {e['fallback_reason']}")
    else:
        lines.append(f"ensemble: v{e['version']} of study {e['study']}, {e['members']} members, "
                     f"{e['age_hours']:.1f} h old, best {e['best_value']:.3f}, "
                     f"mean {e['mean_value']:.3f}")
        if e["broken"]:
            lines.append(f"!! ENSEMBLE v{e['version']} IS BROKEN: " + "; ".join(e["broken"]))
        if e["members_with_other_risk_rules"]:
            lines.append(f"!! {e['members_with_other_risk_rules']} member(s) trained under other "
                         "risk rules than configured (cappuccino ensemble show)")
        if not e["follows_active_study"]:
            lines.append(f"!! THE ENSEMBLE DOES NOT FOLLOW THE ACTIVE STUDY "
                         f"({e['study']} != {s['active_study']})")
    ls = e.get("last_sync")
    if ls and ls["needed"]:
        lines.append(f"!! last sync: {ls['needed']} more eligible trial(s) needed before the "
                     f"ensemble can follow the study ({ls['ts'][:16]})")
    if not s["traders"]:
        lines.append("trader: no equity recorded yet")
    for name, tr in s["traders"].items():
        lag = f", {tr['lag_bars']:.1f} bars behind" if "lag_bars" in tr else ""
        kind = " (replay)" if tr["mode"] == "replay" else ""
        lines.append(f"trader {name}{kind}: equity {tr['equity']:,.2f}, "
                     f"{tr['positions']} positions, "
                     f"today {tr['pnl_today']:+,.2f}; last bar {tr['last_bar']}{lag}"
                     + (f"; {tr['quiet_bars_24h']} quiet asset-bar(s) flat-filled in 24 h"
                        if tr.get("quiet_bars_24h") else ""))
        if tr.get("lag_bars", 0) > 2:
            lines.append("!! THE TRADER IS BEHIND: no bar processed for more than one bar")
    d = s["deployer"]
    lines.append("deployer: no decision yet" if d is None else
                 f"deployer: {d['ts'][:16]} study {d['study']} trial id {d['trial_id']}: "
                 f"{'promoted' if d['promoted'] else ('passed' if d['passed'] else 'rejected')}"
                 f" ({'; '.join(d['reasons'])})")
    units = s["systemd"]["units"]
    if not s["systemd"]["available"]:
        lines.append(f"units: unknown: {s['systemd']['reason']}")
    else:
        for name, u in sorted(units.items()):
            lines.append(f"  {name:<48}{u['state']:<22}restarts {u['restarts']}")
        other = [n for n in units if n.startswith("cappuccino-train@")
                 and units[n]["state"].startswith("active")
                 and n.split("@", 1)[1].split(":")[0].removesuffix(".service")
                 != s["active_study"]]
        for n in other:
            lines.append(f"!! {n} TRAINS ANOTHER STUDY THAN THE ACTIVE ONE ({s['active_study']})")
    return "\n".join(lines)
