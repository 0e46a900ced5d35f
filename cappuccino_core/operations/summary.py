"""The daily summary: equity, P&L, trades, stop exits, the ensemble and training, once a day.

`cappuccino monitor` (every 5 minutes) sends it through the alert channels on its first run at
or after `alerts.daily_summary_at` (HH:MM, UTC) each day; a `daily-summary` event for the day
makes sure it goes once, also when several monitors run.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..storage.database import find_events, record_event
from ..trading.journal import Journal

SOURCE, KIND = "monitor", "daily-summary"


def due(cfg: Config, engine: Engine, now: datetime) -> str | None:
    """Today's key if the summary is due and not sent yet, else None."""
    at = cfg.alerts.daily_summary_at
    if at is None:
        return None
    hour, minute = map(int, at.split(":"))
    if (now.hour, now.minute) < (hour, minute):
        return None
    key = f"summary:{now:%Y-%m-%d}"
    sent = find_events(engine, kind=KIND, incident_key=key, newest=1)
    return None if sent else key


def compose(cfg: Config, engine: Engine, status: dict, now: datetime) -> str:
    """The summary's text, from `status.collect` and the last 24 hours of the journal."""
    since = now - timedelta(days=1)
    lines = []
    for name, t in status["traders"].items():
        if t["mode"] == "replay":
            continue
        journal = Journal(engine, name)
        then = journal.equity_before(since)
        pnl = f"{t['equity'] - then:+,.2f} in 24 h" if then else "no equity 24 h ago"
        trades = len(journal.fill_rows(since))
        stops = len(find_events(engine, source=name, kind="stop_exit", since=since))
        fees = journal.fee_bases(pd.Timestamp(since))
        lines.append(f"trader {name}: equity {t['equity']:,.2f} ({pnl}), drawdown "
                     f"{t['drawdown']:.1%}, {t['positions']} positions, {trades} fills, "
                     f"{stops} stop exits; fees {fees['booked']} booked by the broker, "
                     f"{fees['estimated']} estimated, {fees['measured']} measured")
    if not any(t["mode"] == "live" for t in status["traders"].values()):
        lines.append("trader: no live trader has recorded equity yet")
    e = status["ensemble"] or {}
    lines.append(f"ensemble: v{e['version']} of study {e['study']}, {e['members']} members, "
                 f"{e['age_hours']:.0f} h old" if e.get("version") is not None
                 else "ensemble: none published")
    t = status["training"] or {}
    if t.get("study_exists"):
        best = f"{t['best']:.3f}" if t["best"] is not None else "-"
        lines.append(f"training ({status['active_study']}): {t['counts'].get('COMPLETE', 0)} "
                     f"complete, best {best}")
    lines.append(f"health: {status['health']['level']}"
                 + "".join(f"\n  {p['level']}: {p['message']}" for p in status["health"]["problems"]))
    return "\n".join(lines)


def send_if_due(cfg: Config, engine: Engine, now: datetime | None = None,
                status: dict | None = None) -> bool:
    """Send today's summary if it is due (from `status`, else a fresh `status.collect`);
    True when it was sent."""
    from ..common.alerts import send_alert
    from .status import collect
    now = now or datetime.now(timezone.utc)
    key = due(cfg, engine, now)
    if key is None:
        return False
    text = compose(cfg, engine, status or collect(cfg), now)
    send_alert(cfg, f"daily summary {now:%Y-%m-%d}", text, "info", "summary")
    record_event(engine, SOURCE, "info", KIND, text, incident_key=key)
    return True
