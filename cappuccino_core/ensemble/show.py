"""What `cappuccino ensemble show` says about the current version, as data (its `--json`:
docs/schemas/ensemble-show.json) and as text."""

from __future__ import annotations

import pandas as pd

from ..common.config import Config
from .manifest import current_dir, current_manifest, ensembles_dir, version_problems


def current_ensemble(cfg: Config) -> dict | None:
    """The current version: its members, whether it follows the active study, whether it is
    whole on disk; None before the first publish."""
    manifest = current_manifest(ensembles_dir(cfg))
    if manifest is None:
        return None
    members = [{"number": m.number, "trial_id": m.trial_id, "value": m.value,
                "trailing_stop_pct": m.spec.env.trailing_stop_pct,
                "action_space": m.spec.env.action_space,
                "completed_at": m.completed_at, "params": m.spec.hyperparameters,
                "risk_differences": m.spec.risk_differences(cfg)}
               for m in manifest.members]
    return {"version": manifest.version, "study": manifest.study,
            "created_at": manifest.created_at.isoformat(),
            "age_hours": round(manifest.age_hours(), 2),
            "follows_active_study": manifest.study == cfg.active_study,
            "active_study": cfg.active_study, "fallback": manifest.fallback,
            "reason": manifest.reason,
            "broken": version_problems(current_dir(ensembles_dir(cfg))),
            "risk_mismatch": cfg.ensemble.risk_mismatch, "members": members}


def render(e: dict) -> str:
    head = (f"ensemble v{e['version']}  study {e['study']}  created "
            f"{e['created_at'][:16].replace('T', ' ')} UTC")
    if e["fallback"]:
        return f"{head}: the FALLBACK ({e['fallback']}), no members: {e['reason']}"
    values = [m["value"] for m in e["members"]]
    if not values:  # an unreadable manifest: nothing else is known
        return f"{head}: BROKEN: " + "; ".join(e["broken"])
    lines = [f"{head} ({e['age_hours']:.1f} h ago)  members {len(values)}  mean value "
             f"{sum(values) / len(values):.3f}  best {max(values):.3f}"]
    if not e["follows_active_study"]:
        lines.append(f"WARNING: the active study is {e['active_study']!r}: this ensemble does "
                     "not follow it")
    if e["broken"]:
        lines.append(f"BROKEN: ensemble v{e['version']}: " + "; ".join(e["broken"]))
    lines.append(f"{'trial':>6} {'id':>8} {'value':>9} {'trailing stop':>14} {'actions':>9} "
                 f"{'age':>8}  parameters")
    now = pd.Timestamp.now(tz="UTC")
    for m in e["members"]:
        stop, p, done = m["trailing_stop_pct"], m["params"], m["completed_at"]
        age = f"{(now - pd.Timestamp(done)).total_seconds() / 3600:.1f} h" if done else "-"
        lr = f"{p['learning_rate']:.1e}" if "learning_rate" in p else "-"
        gamma = f"{p['gamma']:.3f}" if "gamma" in p else "-"
        lines.append(f"{m['number']:>6} {m['trial_id']:>8} {m['value']:>9.3f} "
                     f"{(f'{stop:.0%}' if stop else '-'):>14} {m['action_space']:>9} {age:>8}  "
                     f"lr {lr} gamma {gamma} lookback {p.get('lookback', '-')}")
    differing = [(m, d) for m in e["members"] for d in m["risk_differences"]]
    if differing:
        lines.append(f"WARNING: {len({m['trial_id'] for m, _ in differing})} member(s) trained "
                     f"under other risk rules than configured (ensemble.risk_mismatch: "
                     f"{e['risk_mismatch']}):")
        lines += [f"  trial {m['number']} (id {m['trial_id']}): {d}" for m, d in differing]
    return "\n".join(lines)
