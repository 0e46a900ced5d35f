"""The trader's persistence: its order journal, its state, its equity snapshots.

`Trader` decides; this module owns what is written down. During a database outage the writes
of a stop exit are held in memory, in order (`tolerant()`), and written when the database is
back (`flush()`): a stop never waits for the database. Orders move through `OrderStatus`
along the transitions in `ALLOWED` (journaled as `pending_submit` before they are sent, then
whatever the broker says, until a final status); a transition outside it is a bug and raises
`InvalidTransition` instead of silently rewriting history. The trader's state is a typed record
(`TraderState`) saved key by key (`StateKey`), so a crash between two writes loses nothing that
was saved.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..broker.base import FINAL, FeeBooking, OrderState, OrderStatus
from ..common.errors import DATABASE_DOWN, CappuccinoError
from ..storage.database import (
    decisions,
    equity_snapshots,
    fee_bookings,
    fills,
    orders,
    record_event,
    trader_state,
)

log = logging.getLogger(__name__)


OPEN = set(OrderStatus) - FINAL - {OrderStatus.PENDING_SUBMIT}
# From each status, where an order may go next. A final status only repeats itself (the same
# answer read twice).
# `not_sent` is final for a crash's clean-up, but the resumed bar may send the order after all.
BROKER_SAYS = OPEN | FINAL - {OrderStatus.NOT_SENT, OrderStatus.SKIPPED}
ALLOWED: dict[OrderStatus, set[OrderStatus]] = {
    OrderStatus.PENDING_SUBMIT: BROKER_SAYS | {OrderStatus.NOT_SENT},
    OrderStatus.NOT_SENT: BROKER_SAYS | {OrderStatus.NOT_SENT},
    **{s: BROKER_SAYS for s in OPEN},
    **{s: {s} for s in FINAL - {OrderStatus.NOT_SENT}},
}


class InvalidTransition(CappuccinoError):
    """An order status change the lifecycle does not allow (a bug, or a broker gone mad)."""
    label = "journal refused"


class StateKey(str, enum.Enum):
    STOPS = "stops"
    LAST_BAR = "last_bar"
    EQUITY_PEAK = "equity_peak"
    HALTED = "halted"
    DECISION = "decision"
    COOLDOWN = "cooldown"
    MODE = "mode"
    DUST = "dust"


LIVE, REPLAY = "live", "replay"  # a trader's mode: a replay is history, never "running" or "behind"


@dataclass
class TraderState:
    stops: dict[str, dict] = field(default_factory=dict)  # symbol -> {"entry", "peak"}
    last_bar: str | None = None       # open time (ISO) of the last bar processed
    equity_peak: float | None = None  # for the drawdown halt
    halted: bool = False              # new buying halted by the drawdown limit
    decision: dict | None = None      # {"bar", "target", "ensemble"}: saved before any order
    cooldown: dict[str, str] = field(default_factory=dict)  # symbol -> no buying before (ISO)
    mode: str | None = None           # LIVE or REPLAY (None: a trader of an earlier release)
    dust: dict[str, float] = field(default_factory=dict)  # symbol -> units too small to sell


def traders_with_data(engine: Engine) -> list[str]:
    """Names of the traders with equity history in this database, most recently active first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(equity_snapshots.c.trader,
                                      sa.func.max(equity_snapshots.c.id).label("last"))
                            .group_by(equity_snapshots.c.trader)
                            .order_by(sa.desc("last"))).all()
    return [r.trader for r in rows]


def replay_traders(engine: Engine) -> set[str]:
    """The traders that are replays (history on a simulated clock): never running, never
    behind, never alerted about."""
    with engine.connect() as conn:  # (a JSON column: compared here, not in SQL)
        rows = conn.execute(sa.select(trader_state.c.trader, trader_state.c.value).where(
            trader_state.c.key == StateKey.MODE.value)).all()
    return {trader for trader, mode in rows if mode == REPLAY}


def live_traders(engine: Engine) -> list[str]:
    """The traders with equity history that are not replays, most recently active first."""
    replays = replay_traders(engine)
    return [t for t in traders_with_data(engine) if t not in replays]


def pick_trader(engine: Engine, asked: str | None) -> tuple[str | None, str]:
    """The trader to show: the one asked for, else 'paper' if it has traded, else the most
    recently active one; and a note for the reader when the choice was not theirs."""
    have = traders_with_data(engine)
    if asked is not None:
        note = "" if asked in have else (
            f"Trader {asked!r} has no equity history; traders with data: "
            f"{', '.join(have) or 'none'}.")
        return asked, note
    if not have:
        return None, "No trader has equity history in this database yet."
    chosen = "paper" if "paper" in have else have[0]
    others = [t for t in have if t != chosen]
    return chosen, (f"Showing trader {chosen!r}" + (f"; also with data: {', '.join(others)} "
                                                     "(--trader NAME)" if others else "") + ".")




class Journal:
    def __init__(self, engine: Engine, trader: str):
        self.engine, self.trader = engine, trader
        self.pending: list[Callable[[], Any]] = []  # writes an outage held back, in order
        self._tolerant = False

    # --- outages -------------------------------------------------------------------------

    @contextlib.contextmanager
    def tolerant(self):
        """Within it, a write that finds the database down is held back instead of raising."""
        before, self._tolerant = self._tolerant, True
        try:
            yield
        finally:
            self._tolerant = before

    def _run(self, write: Callable[[], Any], held_back: Any = None) -> Any:
        if self.pending:
            if self._tolerant:  # behind the writes already waiting, never before them
                self.pending.append(write)
                return held_back
            self.flush()
        try:
            return write()
        except DATABASE_DOWN:
            if not self._tolerant:
                raise
            self.pending.append(write)
            return held_back

    def flush(self) -> int:
        """Write what an outage held back; raises while the database is still down.
        Returns how many writes went through."""
        done = 0
        while self.pending:
            self.pending[0]()
            self.pending.pop(0)
            done += 1
        return done

    # --- state ---------------------------------------------------------------------------

    def load_state(self) -> TraderState:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(trader_state.c.key, trader_state.c.value).where(
                trader_state.c.trader == self.trader)).all()
        known = {k.value for k in StateKey}
        return TraderState(**{k: v for k, v in rows if k in known})

    def save_state(self, state: TraderState, *keys: StateKey) -> None:
        values = {StateKey(k).value: _copy(getattr(state, StateKey(k).value)) for k in keys}

        def write():
            with self.engine.begin() as conn:
                for key, value in values.items():
                    conn.execute(trader_state.delete().where(
                        trader_state.c.trader == self.trader, trader_state.c.key == key))
                    conn.execute(trader_state.insert().values(trader=self.trader, key=key,
                                                              value=value))
        self._run(write)

    # --- orders --------------------------------------------------------------------------

    def open_orders(self) -> list[str]:
        """Client order ids a crash may have left unresolved."""
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(orders.c.client_order_id).where(
                orders.c.trader == self.trader,
                orders.c.status.in_([s.value for s in OPEN | {OrderStatus.PENDING_SUBMIT}])))
                .scalars())

    def record_new(self, coid: str, symbol: str, side: str, qty: float, purpose: str,
                   when: pd.Timestamp) -> bool | None:
        """Journal an order before it is sent; False if it is journaled already, None if an
        outage held the write back (the caller asks the broker before sending)."""
        return self._run(lambda: self._insert(coid, symbol, side, qty, purpose, when,
                                              OrderStatus.PENDING_SUBMIT))

    def _insert(self, coid: str, symbol: str, side: str, qty: float, purpose: str,
                when: pd.Timestamp, status: OrderStatus) -> bool:
        """A new order row; False if the client order id is journaled already."""
        try:
            with self.engine.begin() as conn:
                conn.execute(orders.insert().values(
                    client_order_id=coid, trader=self.trader, bar_time=when.to_pydatetime(),
                    symbol=symbol, side=side, qty=qty, reason=purpose, status=status.value))
            return True
        except sa.exc.IntegrityError:
            return False

    def _status(self, conn, coid: str) -> tuple[OrderStatus, float, float | None]:
        """(status, filled quantity, average fill price) as journaled."""
        row = conn.execute(sa.select(orders.c.status, orders.c.filled_qty,
                                     orders.c.filled_avg_price).where(
            orders.c.client_order_id == coid)).one()
        return OrderStatus(row.status), row.filled_qty or 0.0, row.filled_avg_price

    @staticmethod
    def _check(coid: str, old: OrderStatus, new: OrderStatus) -> None:
        if new not in ALLOWED[old]:
            raise InvalidTransition(f"order {coid}: {old.value} -> {new.value} is not a "
                                    "transition of the order lifecycle")

    def mark_not_sent(self, coid: str) -> None:
        with self.engine.begin() as conn:
            old, _, _ = self._status(conn, coid)
            self._check(coid, old, OrderStatus.NOT_SENT)
            conn.execute(orders.update().where(orders.c.client_order_id == coid).values(
                status=OrderStatus.NOT_SENT.value, updated_at=datetime.now(timezone.utc)))

    def record_result(self, r: OrderState, at: pd.Timestamp | None = None) -> None:
        """The broker's answer about an order: its status, and a fill row for what was newly
        filled since the last answer, at `at` on the trader's clock (default now)."""
        self._run(lambda: self._record_result(r, at))

    def _record_result(self, r: OrderState, at: pd.Timestamp | None) -> None:
        new = OrderStatus(r.status)
        with self.engine.begin() as conn:
            old, prev, prev_avg = self._status(conn, r.client_order_id)
            self._check(r.client_order_id, old, new)
            conn.execute(orders.update().where(
                orders.c.client_order_id == r.client_order_id).values(
                status=new.value, broker_order_id=r.broker_id, filled_qty=r.filled_qty,
                filled_avg_price=r.filled_avg_price, fee=r.fee,
                updated_at=datetime.now(timezone.utc)))
            if r.filled_qty > prev + 1e-12 and r.filled_avg_price:
                new = r.filled_qty - prev
                share = new / max(r.filled_qty, 1e-300)
                # the broker's average is over every fill of the order: this fill's own price
                # is what the average moved by (one fill so far: the average itself)
                price = (r.filled_qty * r.filled_avg_price - prev * (prev_avg or 0.0)) / new
                conn.execute(fills.insert().values(
                    client_order_id=r.client_order_id, symbol=r.symbol, side=r.side,
                    qty=new, price=price, fee=r.fee * share, fee_qty=r.fee_qty * share,
                    fee_basis=r.fee_basis, fee_deferred=r.fee_deferred,
                    ts=(at if at is not None else pd.Timestamp.now(tz="UTC")).to_pydatetime()))
        if new is OrderStatus.REJECTED:
            log.error("order %s rejected: %s", r.client_order_id, r.reason)
            self.event("error", "order_rejected", f"{r.client_order_id}: {r.reason}")

    def record_skipped(self, coid: str, symbol: str, side: str, qty: float, purpose: str,
                       when: pd.Timestamp, why: str) -> None:
        """A planned order that was not sent (below the asset's minimum), with the reason."""
        def write():
            if self._insert(coid, symbol, side, qty, purpose, when, OrderStatus.SKIPPED):
                record_event(self.engine, self.trader, "info", "order_skipped",
                             f"{coid}: {why}", {"symbol": symbol, "side": side, "qty": qty,
                                                "why": why})  # once: a resumed bar skips again
        self._run(write)

    def record_decision(self, bar_time: pd.Timestamp, target: dict[str, float],
                        prices: dict[str, float], quiet: list[str], ensemble: int | None,
                        band: float, cash: float, positions: dict[str, float],
                        stops: dict, cooldown: dict[str, str]) -> None:
        """The bar's target weights, the prices its plan used, and the account and stops
        before its orders (what `reconcile` replays from)."""
        def write():
            with self.engine.begin() as conn:
                conn.execute(decisions.delete().where(decisions.c.trader == self.trader,
                                                      decisions.c.bar_time == bar_time.to_pydatetime()))
                conn.execute(decisions.insert().values(
                    trader=self.trader, bar_time=bar_time.to_pydatetime(), target=target,
                    prices=prices, quiet=quiet, ensemble=ensemble, band=band, cash=cash,
                    positions=positions, stops=_copy(stops), cooldown=dict(cooldown)))
        self._run(write)

    # --- fees the broker books later -------------------------------------------------------

    def _fills(self):
        mine = sa.select(orders.c.client_order_id).where(orders.c.trader == self.trader)
        return fills.c.client_order_id.in_(mine)

    def unbooked_since(self, horizon: pd.Timestamp) -> str | None:
        """The day (YYYY-MM-DD) of this trader's oldest fill since `horizon` whose fee the
        broker has not booked; None when every one is booked."""
        with self.engine.connect() as conn:
            oldest = conn.execute(sa.select(sa.func.min(fills.c.ts)).where(
                self._fills(), fills.c.fee_basis != "booked",
                fills.c.ts >= horizon.to_pydatetime())).scalar()
        return None if oldest is None else f"{pd.Timestamp(oldest):%Y-%m-%d}"

    def book_fees(self, bookings: list[FeeBooking], seen_bar: pd.Timestamp) -> list[str]:
        """Put the broker's fee bookings on the fills they are for: Alpaca's CFEE names no
        order, so a booking goes to that day's fills of its symbol and side, shared in
        proportion to their notional; the first booking of a fill replaces its recorded fee
        (estimated or measured), later ones add to it. Each booking is read once. Returns a
        line for each booking no fill was found for."""
        with self.engine.connect() as conn:
            seen = set(conn.execute(sa.select(fee_bookings.c.activity_id).where(
                fee_bookings.c.trader == self.trader)).scalars())
        new = [b for b in bookings if b.activity_id not in seen]
        groups: dict[tuple, list[FeeBooking]] = {}
        for b in new:
            groups.setdefault((b.date, b.symbol, b.side), []).append(b)
        unmatched = []
        with self.engine.begin() as conn:
            for (day, symbol, side), group in groups.items():
                start = pd.Timestamp(day, tz="UTC")
                rows = conn.execute(sa.select(fills).where(
                    self._fills(), fills.c.symbol == symbol, fills.c.side == side,
                    fills.c.ts >= start.to_pydatetime(),
                    fills.c.ts < (start + pd.Timedelta(days=1)).to_pydatetime())).all()
                qty, usd = sum(b.qty for b in group), sum(b.usd for b in group)
                notional = sum(r.qty * r.price for r in rows)
                if not rows or notional <= 0:
                    unmatched.append(f"{symbol} {side} fees of {day}: {qty:.10g} units and "
                                     f"{usd:.6g} USD booked, no fill of that day in the journal")
                for r in rows:
                    w = r.qty * r.price / notional
                    fee_qty, fee = (r.fee_qty, r.fee) if r.fee_basis == "booked" else (0.0, 0.0)
                    fee_qty += qty * w
                    fee += qty * w * r.price + usd * w
                    conn.execute(fills.update().where(fills.c.id == r.id).values(
                        fee=fee, fee_qty=fee_qty, fee_basis="booked",
                        booked_bar=r.booked_bar or seen_bar.to_pydatetime()))
                for b in group:
                    conn.execute(fee_bookings.insert().values(
                        trader=self.trader, activity_id=b.activity_id, date=b.date,
                        symbol=b.symbol, side=b.side, qty=b.qty, usd=b.usd, fills=len(rows),
                        seen_bar=seen_bar.to_pydatetime()))
                for coid in {r.client_order_id for r in rows}:  # the order's total
                    total = conn.execute(sa.select(sa.func.sum(fills.c.fee)).where(
                        fills.c.client_order_id == coid)).scalar()
                    conn.execute(orders.update().where(orders.c.client_order_id == coid)
                                 .values(fee=total))
        return unmatched

    def deferred_fills(self) -> list:
        """The fills whose fee the account paid after the fill (booked or not yet)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(fills).where(self._fills(),
                                                       fills.c.fee_deferred)).all()

    def owed(self) -> tuple[dict[str, float], float]:
        """Fees the account has not paid yet (deferred at the fill, not booked): units per
        asset, and USD. The broker's positions less these, and its cash less these, are what
        the journal's fills add up to."""
        units: dict[str, float] = {}
        usd = 0.0
        for r in self.deferred_fills():
            if r.fee_basis == "booked":
                continue
            if r.side == "buy":
                units[r.symbol] = units.get(r.symbol, 0.0) + r.fee_qty
                usd += r.fee - r.fee_qty * r.price
            else:
                usd += r.fee
        return units, usd

    def cash(self) -> float | None:
        """What the journal's fills add up to in cash, from the cash of its first snapshot:
        sells bring their notional less the fee, buys cost theirs (and the part of a fee
        taken in USD). None before the first snapshot."""
        with self.engine.connect() as conn:
            first = conn.execute(sa.select(equity_snapshots.c.cash).where(
                equity_snapshots.c.trader == self.trader)
                .order_by(equity_snapshots.c.id).limit(1)).scalar()
            if first is None:
                return None
            flows = conn.execute(sa.select(fills.c.side, fills.c.qty, fills.c.price,
                                           fills.c.fee, fills.c.fee_qty).where(
                self._fills())).all()
        return first + sum(q * p - fee if side == "sell" else -(q * p + fee - fq * p)
                           for side, q, p, fee, fq in flows)

    def fee_bases(self, since: pd.Timestamp | None = None) -> dict[str, int]:
        """How many fills' fees are measured, estimated and booked (since `since`)."""
        q = sa.select(fills.c.fee_basis, sa.func.count()).where(self._fills())
        if since is not None:
            q = q.where(fills.c.ts >= since.to_pydatetime())
        with self.engine.connect() as conn:
            got = dict(conn.execute(q.group_by(fills.c.fee_basis)).all())
        return {b: int(got.get(b, 0)) for b in ("measured", "estimated", "booked")}

    def positions(self) -> dict[str, float]:
        """What the journal's fills add up to, per symbol: bought less the fee taken from the
        asset, less sold. After every bar it must equal the broker's positions."""
        signed = sa.case((fills.c.side == "buy", fills.c.qty - fills.c.fee_qty),
                         else_=-fills.c.qty)
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(fills.c.symbol, sa.func.sum(signed))
                                .where(self._fills())
                                .group_by(fills.c.symbol)).all()
        return {symbol: float(q) for symbol, q in rows}

    def has_state(self) -> bool:
        """Whether this trader has traded or recorded anything in this database."""
        with self.engine.connect() as conn:
            return any(conn.execute(sa.select(table.c.trader).where(
                table.c.trader == self.trader).limit(1)).first()
                for table in (trader_state, orders, equity_snapshots))

    def reset(self) -> None:
        """Forget this trader: its state, orders, fills and snapshots (a fresh replay)."""
        with self.engine.begin() as conn:
            conn.execute(fills.delete().where(self._fills()))
            for table in (orders, trader_state, equity_snapshots, decisions, fee_bookings):
                conn.execute(table.delete().where(table.c.trader == self.trader))

    # --- read side: what status, the summary, the monitor, the reports, reconcile and replay
    # read (no SQL on these tables anywhere else) ------------------------------------------

    def last_bar(self) -> str | None:
        """Open time (ISO) of the last bar this trader processed."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(trader_state.c.value).where(
                trader_state.c.trader == self.trader,
                trader_state.c.key == StateKey.LAST_BAR.value)).scalar()

    def equity_rows(self, newest: int | None = None) -> list:
        """Equity snapshots (ts, equity, cash, positions), oldest first; only the `newest`
        ones when given."""
        q = sa.select(equity_snapshots.c.ts, equity_snapshots.c.equity, equity_snapshots.c.cash,
                      equity_snapshots.c.positions).where(
            equity_snapshots.c.trader == self.trader).order_by(equity_snapshots.c.id.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(q if newest is None else q.limit(newest)).all()
        return rows[::-1]

    def last_snapshot(self):
        """The newest equity snapshot (ts, equity, cash, positions), or None."""
        rows = self.equity_rows(newest=1)
        return rows[0] if rows else None

    def peak_equity(self) -> float | None:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(equity_snapshots.c.equity)).where(
                equity_snapshots.c.trader == self.trader)).scalar()

    def equity_before(self, when: datetime) -> float | None:
        """Equity at the last snapshot at or before `when`."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(equity_snapshots.c.equity).where(
                equity_snapshots.c.trader == self.trader, equity_snapshots.c.ts <= when)
                .order_by(equity_snapshots.c.id.desc()).limit(1)).scalar()

    def fill_rows(self, since: datetime | None = None) -> list:
        """Fills (client_order_id, symbol, side, qty, price, fee, ts, bar_time of the order),
        in order."""
        q = (sa.select(fills.c.client_order_id, fills.c.symbol, fills.c.side, fills.c.qty,
                       fills.c.price, fills.c.fee, fills.c.ts, orders.c.bar_time)
             .join(orders, orders.c.client_order_id == fills.c.client_order_id)
             .where(orders.c.trader == self.trader).order_by(fills.c.id))
        if since is not None:
            q = q.where(fills.c.ts >= since)
        with self.engine.connect() as conn:
            return conn.execute(q).all()

    def order_rows(self, newest: int) -> list:
        """The `newest` orders, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(orders).where(orders.c.trader == self.trader)
                                .order_by(orders.c.id.desc()).limit(newest)).all()
        return rows[::-1]

    def decision_rows(self, start: datetime | None = None, end: datetime | None = None) -> list:
        """Decisions with bar_time in [start, end), in bar order."""
        q = sa.select(decisions).where(decisions.c.trader == self.trader)
        if start is not None:
            q = q.where(decisions.c.bar_time >= start)
        if end is not None:
            q = q.where(decisions.c.bar_time < end)
        with self.engine.connect() as conn:
            return conn.execute(q.order_by(decisions.c.bar_time)).all()

    def trades_of_decision(self, bar: datetime, lived_from: datetime, lived_to: datetime) -> list:
        """The orders (with their fills, if any) a decision led to: the rebalance orders of
        `bar`, and the stop exits of the bars in [lived_from, lived_to)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(orders.c.symbol, orders.c.side, orders.c.reason, orders.c.status,
                          orders.c.bar_time, fills.c.qty, fills.c.price, fills.c.fee,
                          fills.c.fee_qty, fills.c.fee_deferred)
                .select_from(orders.outerjoin(fills, fills.c.client_order_id
                                              == orders.c.client_order_id))
                .where(orders.c.trader == self.trader,
                       sa.or_(sa.and_(orders.c.reason == "rebalance", orders.c.bar_time == bar),
                              sa.and_(orders.c.reason == "stop", orders.c.bar_time >= lived_from,
                                      orders.c.bar_time < lived_to)))).all()

    def has_snapshots(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(equity_snapshots.c.id).where(
                equity_snapshots.c.trader == self.trader).limit(1)).first() is not None

    def snapshot(self, ts: pd.Timestamp, equity: float, cash: float,
                 positions: dict[str, float]) -> None:
        def write():
            with self.engine.begin() as conn:
                conn.execute(equity_snapshots.insert().values(
                    trader=self.trader, ts=ts.to_pydatetime(), equity=equity, cash=cash,
                    positions=positions))
        self._run(write)

    def event(self, level: str, kind: str, message: str, data: dict | None = None) -> None:
        self._run(lambda: record_event(self.engine, self.trader, level, kind, message, data))


def _copy(value):
    """A value as it is now (a held-back write must not see later changes to the state)."""
    import copy
    return copy.deepcopy(value)
