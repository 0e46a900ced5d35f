"""Views of a trader's database state, as data (their `--json`) and as text: `cappuccino
trader status` and `... history`."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from ..common.config import Config
from ..ensemble.manifest import current_manifest, ensembles_dir
from .journal import Journal


def trader_status_data(cfg: Config, engine: Engine, name: str) -> dict:
    """One trader's state as data (`trader status --json`: docs/schemas/trader-status.json)."""
    journal = Journal(engine, name)
    state = journal.load_state()
    owed_units, owed_usd = journal.owed()
    snap = journal.last_snapshot()
    manifest = current_manifest(ensembles_dir(cfg))
    trail, sl = cfg.risk.trailing_stop_pct, cfg.risk.stop_loss_pct
    positions = []
    for symbol, qty in sorted((snap.positions if snap is not None else {}).items()):
        s = state.stops.get(symbol, {})
        level = max(s.get("peak", 0) * (1 - trail) if trail else 0,
                    s.get("entry", 0) * (1 - sl) if sl else 0)
        positions.append({"symbol": symbol, "qty": qty, "entry": s.get("entry"),
                          "peak": s.get("peak"), "stop_level": level or None})
    return {"trader": name, "mode": state.mode or "live", "last_bar": state.last_bar,
            "ensemble": None if manifest is None else {"version": manifest.version,
                                                        "study": manifest.study},
            "equity": None if snap is None else snap.equity,
            "cash": None if snap is None else snap.cash,
            "at": None if snap is None else snap.ts.isoformat(),
            "halted": state.halted, "positions": positions, "dust": state.dust,
            "fees": {**journal.fee_bases(), "owed_units": owed_units, "owed_usd": owed_usd}}


def render_trader_status(d: dict) -> str:
    e = d["ensemble"]
    kind = " (replay)" if d["mode"] == "replay" else ""
    lines = [f"trader {d['trader']}{kind}: last bar {d['last_bar'] or '-'}; ensemble "
             + (f"v{e['version']} (study {e['study']})" if e else "none")]
    if d["equity"] is not None:
        lines.append(f"equity {d['equity']:,.2f}  cash {d['cash']:,.2f}  (at {d['at'][:16]})")
    if d["halted"]:
        lines.append("!! new buying halted by the drawdown limit")
    lines.append(f"{'symbol':<10}{'qty':>16}{'entry':>14}{'peak':>14}{'stop level':>14}")
    for p in d["positions"]:
        lines.append(f"{p['symbol']:<10}{p['qty']:>16.8f}{p['entry'] or 0:>14.6g}"
                     f"{p['peak'] or 0:>14.6g}{p['stop_level'] or 0:>14.6g}")
    f = d["fees"]
    owed = [f"{q:.10g} {s}" for s, q in sorted(f["owed_units"].items())]
    owed += [f"{f['owed_usd']:,.2f} USD"] if f["owed_usd"] else []
    lines.append(f"fees of the fills: {f['booked']} booked by the broker, {f['measured']} "
                 f"measured, {f['estimated']} estimated at the configured rate"
                 + (f"; not yet taken by the broker: {', '.join(owed)}" if owed else ""))
    if d["dust"]:
        lines.append("dust (below the venue's minimum order value, not sold): " + ", ".join(
            f"{s} {q:.10g}" for s, q in sorted(d["dust"].items())))
    return "\n".join(lines)


def trader_history_data(engine: Engine, name: str, limit: int = 50) -> dict:
    """The trader's last `limit` orders, oldest first, and its realised P&L (`trader history
    --json`: docs/schemas/trader-history.json)."""
    journal = Journal(engine, name)
    rows, fill_rows = journal.order_rows(newest=limit), journal.fill_rows()
    realised, fees_total = realised_pnl(fill_rows)
    return {"trader": name, "orders": [
        {"client_order_id": r.client_order_id, "bar_time": r.bar_time.isoformat(),
         "symbol": r.symbol, "side": r.side, "reason": r.reason, "qty": r.qty,
         "filled_qty": r.filled_qty, "filled_avg_price": r.filled_avg_price, "fee": r.fee,
         "status": r.status} for r in rows],
        "fills": len(fill_rows), "fees": fees_total, "realised_pnl": realised}


def render_trader_history(d: dict) -> str:
    lines = [f"{'bar':<17}{'symbol':<10}{'side':<5}{'reason':<10}{'qty':>16}{'price':>14}"
             f"{'fee':>10}  status"]
    for r in d["orders"]:
        price = f"{r['filled_avg_price']:.6g}" if r["filled_avg_price"] else "-"
        lines.append(f"{r['bar_time'][:16].replace('T', ' ')} {r['symbol']:<10}{r['side']:<5}"
                     f"{r['reason']:<10}{r['filled_qty']:>16.8f}{price:>14}{r['fee'] or 0:>10.2f}"
                     f"  {r['status']}")
    lines.append(f"fills {d['fills']}, fees {d['fees']:,.2f}, realised P&L "
                 f"(average cost, after fees) {d['realised_pnl']:,.2f}")
    return "\n".join(lines)


def fill_pnls(fill_rows) -> list[float]:
    """Each fill's realised P&L on the average-cost basis, after its fee (a buy realises only
    its fee), in the order of the fills."""
    held: dict[str, list[float]] = {}
    out = []
    for r in fill_rows:
        q, cost = held.get(r.symbol, [0.0, 0.0])
        if r.side == "buy":
            held[r.symbol] = [q + r.qty, cost + r.qty * r.price]
            out.append(-r.fee)
        else:
            avg = cost / q if q > 0 else r.price
            out.append(r.qty * (r.price - avg) - r.fee)
            held[r.symbol] = [max(q - r.qty, 0.0), max(cost - r.qty * avg, 0.0)]
    return out


def realised_pnl(fill_rows) -> tuple[float, float]:
    """Realised P&L on the average-cost basis, net of all fees; and the fees."""
    return sum(fill_pnls(fill_rows)), sum(r.fee for r in fill_rows)
