"""Text views of a trader's database state: `cappuccino trader status` and `... history`."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..config import Config
from ..ensemble.publish import current_manifest, ensembles_dir
from ..storage import equity_snapshots, fills, orders
from .journal import Journal, TraderState


def trader_status(cfg: Config, engine: Engine, name: str) -> str:
    state = Journal(engine, name).load_state()
    with engine.connect() as conn:
        snap = conn.execute(sa.select(equity_snapshots).where(
            equity_snapshots.c.trader == name).order_by(equity_snapshots.c.id.desc())
            .limit(1)).first()
    if snap is None and state == TraderState():
        return f"trader {name!r}: no state yet"
    manifest = current_manifest(ensembles_dir(cfg))
    lines = [f"trader {name}: last bar {state.last_bar or '-'}; ensemble "
             + (f"v{manifest['version']} (study {manifest['study']})" if manifest else "none")]
    if snap is not None:
        lines.append(f"equity {snap.equity:,.2f}  cash {snap.cash:,.2f}  (at {snap.ts:%Y-%m-%d %H:%M})")
    if state.halted:
        lines.append("!! new buying halted by the drawdown limit")
    stops = state.stops
    trail, sl = cfg.risk.trailing_stop_pct, cfg.risk.stop_loss_pct
    lines.append(f"{'symbol':<10}{'qty':>16}{'entry':>14}{'peak':>14}{'stop level':>14}")
    for symbol, qty in sorted((snap.positions if snap is not None else {}).items()):
        s = stops.get(symbol, {})
        level = max(s.get("peak", 0) * (1 - trail) if trail else 0,
                    s.get("entry", 0) * (1 - sl) if sl else 0)
        lines.append(f"{symbol:<10}{qty:>16.8f}{s.get('entry', 0):>14.6g}{s.get('peak', 0):>14.6g}"
                     f"{level:>14.6g}")
    return "\n".join(lines)


def trader_history(engine: Engine, name: str, limit: int = 50) -> str:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(orders).where(orders.c.trader == name)
                            .order_by(orders.c.id.desc()).limit(limit)).all()
        fill_rows = conn.execute(sa.select(fills.c.symbol, fills.c.side, fills.c.qty,
                                           fills.c.price, fills.c.fee)
                                 .join(orders, orders.c.client_order_id == fills.c.client_order_id)
                                 .where(orders.c.trader == name).order_by(fills.c.id)).all()
    lines = [f"{'bar':<17}{'symbol':<10}{'side':<5}{'reason':<10}{'qty':>16}{'price':>14}"
             f"{'fee':>10}  status"]
    for r in reversed(rows):
        price = f"{r.filled_avg_price:.6g}" if r.filled_avg_price else "-"
        lines.append(f"{r.bar_time:%Y-%m-%d %H:%M} {r.symbol:<10}{r.side:<5}{r.reason:<10}"
                     f"{r.filled_qty:>16.8f}{price:>14}{r.fee:>10.2f}  {r.status}")
    realised, fees_total = realised_pnl(fill_rows)
    lines.append(f"fills {len(fill_rows)}, fees {fees_total:,.2f}, realised P&L "
                 f"(average cost, after fees) {realised:,.2f}")
    return "\n".join(lines)


def realised_pnl(fill_rows) -> tuple[float, float]:
    """Realised P&L on the average-cost basis, net of all fees; and the fees."""
    held: dict[str, list[float]] = {}
    realised = fees_total = 0.0
    for symbol, side, qty, price, fee in fill_rows:
        q, cost = held.get(symbol, [0.0, 0.0])
        fees_total += fee
        realised -= fee
        if side == "buy":
            held[symbol] = [q + qty, cost + qty * price]
        else:
            avg = cost / q if q > 0 else price
            realised += qty * (price - avg)
            held[symbol] = [max(q - qty, 0.0), max(cost - qty * avg, 0.0)]
    return realised, fees_total
