"""`cappuccino status`: one screen on the whole operation (and `--json` for scripts).

Sections grow with the product; each is computed independently, so one broken part (say, an
unreachable database) is shown as such instead of hiding the rest.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from .config import Config
from .ensemble.publish import current_manifest, ensembles_dir
from .storage import events, open_app_db
from .studies import study_summaries

_RECENT = sa.text("""
    SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id
    WHERE s.study_name = :study AND t.state = 'COMPLETE' AND t.datetime_complete >= :since
""")


def collect(cfg: Config) -> dict:
    out: dict = {"active_study": cfg.active_study, "storage": cfg.storage_url.split("@")[-1]}
    try:
        engine = open_app_db(cfg.storage_url)
        out["training"] = _training(engine, cfg)
        out["ensemble"] = _ensemble(engine, cfg)
    except sa.exc.SQLAlchemyError as e:
        out["error"] = f"storage unreachable: {e.__class__.__name__}: {str(e).splitlines()[0]}"
    return out


def _training(engine, cfg: Config) -> dict:
    studies = study_summaries(engine)
    active = studies.get(cfg.active_study or "", None)
    since = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=1)
    with engine.connect() as conn:
        recent = conn.execute(_RECENT, {"study": cfg.active_study, "since": since}).scalar()
    return {"study_exists": active is not None, "counts": active or {},
            "trials_last_hour": recent, "other_studies": sorted(set(studies) - {cfg.active_study})}


def _ensemble(engine, cfg: Config) -> dict:
    manifest = current_manifest(ensembles_dir(cfg))
    with engine.connect() as conn:
        last_sync = conn.execute(sa.select(events).where(events.c.source == "ensemble-sync")
                                 .order_by(events.c.id.desc()).limit(1)).first()
    info: dict = {"last_sync": None if last_sync is None else {
        "ts": last_sync.ts.isoformat(), "kind": last_sync.kind, "message": last_sync.message,
        "needed": (last_sync.data or {}).get("needed")}}
    if manifest is None:
        return info | {"version": None}
    created = datetime.fromisoformat(manifest["created_at"])
    values = [m["value"] for m in manifest["members"]]
    return info | {
        "version": manifest["version"], "study": manifest["study"],
        "follows_active_study": manifest["study"] == cfg.active_study,
        "age_hours": round((datetime.now(timezone.utc) - created).total_seconds() / 3600, 2),
        "members": len(values), "best_value": max(values),
        "mean_value": sum(values) / len(values)}


def render(s: dict) -> str:
    lines = [f"active study: {s['active_study'] or '(none: cappuccino study activate NAME)'}"
             f"   storage: {s['storage']}"]
    if "error" in s:
        return "\n".join(lines + [f"!! {s['error']}"])
    t = s["training"]
    c = t["counts"]
    if not t["study_exists"]:
        lines.append("training: the active study does not exist in the storage yet")
    else:
        best = f"{c['best']:.3f}" if c.get("best") is not None else "-"
        lines.append(f"training: {c['COMPLETE']} complete, {c['RUNNING']} running, "
                     f"{c['FAIL']} failed, {c['PRUNED']} pruned; best {best}; "
                     f"{t['trials_last_hour']} finished in the last hour")
    e = s["ensemble"]
    if e["version"] is None:
        lines.append("ensemble: none published yet")
    else:
        lines.append(f"ensemble: v{e['version']} of study {e['study']}, {e['members']} members, "
                     f"{e['age_hours']:.1f} h old, best {e['best_value']:.3f}, "
                     f"mean {e['mean_value']:.3f}")
        if not e["follows_active_study"]:
            lines.append(f"!! THE ENSEMBLE DOES NOT FOLLOW THE ACTIVE STUDY "
                         f"({e['study']} != {s['active_study']})")
    ls = e.get("last_sync")
    if ls and ls["needed"]:
        lines.append(f"!! last sync: {ls['needed']} more eligible trial(s) needed before the "
                     f"ensemble can follow the study ({ls['ts'][:16]})")
    lines.append("trader, deployer, units: not available in this version")
    return "\n".join(lines)
