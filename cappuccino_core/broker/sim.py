"""The built-in simulated broker: the embedded default when no Alpaca keys are configured.

Market orders fill at once at the current price (`mark()` sets it: the next bar's open in a
replay, the latest trade live) moved against the trader by `slippage_bps`, and pay
`taker_fee` on the notional, exactly as the training environment charges. Minimum sizes and
increments are enforced. Cash, positions and orders live in the database, so the book
survives restarts, and a client order id that was seen before returns the order it named:
submitting twice never trades twice.
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..storage import sim_orders, trader_state
from .base import Account, AssetRule, OrderState, Position

BOOK = ("sim-broker", "book")


class SimBroker:
    def __init__(self, engine: Engine, initial_cash: float, fee: float, slippage_bps: float,
                 min_order_size: float = 1e-6, min_trade_increment: float = 1e-9):
        self.engine, self.fee, self.slip = engine, fee, slippage_bps * 1e-4
        self.min_order_size, self.increment = min_order_size, min_trade_increment
        self.prices: dict[str, float] = {}
        book = self._load_book()
        if book is None:
            book = {"cash": initial_cash, "positions": {}}
            self._save_book(book)
        self.book = book

    @classmethod
    def from_config(cls, cfg, engine: Engine) -> "SimBroker":
        return cls(engine, cfg.broker.initial_cash, cfg.broker.taker_fee,
                   cfg.broker.slippage_bps)

    # --- persistence ---------------------------------------------------------------------

    def _load_book(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(trader_state.c.value).where(
                trader_state.c.trader == BOOK[0], trader_state.c.key == BOOK[1])).first()
        return None if row is None else row[0]

    def _save_book(self, book: dict, conn=None) -> None:
        def write(c):
            updated = c.execute(trader_state.update().where(
                trader_state.c.trader == BOOK[0], trader_state.c.key == BOOK[1]).values(
                value=book)).rowcount
            if not updated:
                c.execute(trader_state.insert().values(trader=BOOK[0], key=BOOK[1], value=book))
        if conn is not None:
            write(conn)
        else:
            with self.engine.begin() as c:
                write(c)

    # --- prices --------------------------------------------------------------------------

    def mark(self, prices: dict[str, float]) -> None:
        """Set the prices orders fill at and positions are valued at."""
        self.prices.update({s: float(p) for s, p in prices.items()})  # no numpy into the DB

    def latest_prices(self, symbols: list[str]) -> dict[str, float]:
        return {s: self.prices[s] for s in symbols if s in self.prices}

    # --- the Broker interface --------------------------------------------------------------

    def account(self) -> Account:
        value = sum(p["qty"] * self.prices.get(s, p["avg"])
                    for s, p in self.book["positions"].items())
        cash = self.book["cash"]
        return Account(cash=cash, equity=cash + value, buying_power=cash)

    def positions(self) -> dict[str, Position]:
        return {s: Position(s, p["qty"], p["avg"]) for s, p in self.book["positions"].items()
                if p["qty"] > 0}

    def asset_rules(self, symbols: list[str]) -> dict[str, AssetRule]:
        return {s: AssetRule(s, self.min_order_size, self.increment) for s in symbols}

    def get_order(self, client_order_id: str) -> OrderState | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sim_orders).where(
                sim_orders.c.client_order_id == client_order_id)).first()
        if row is None:
            return None
        return OrderState(row.client_order_id, row.symbol, row.side, row.qty, row.filled_qty,
                          row.price, row.status, row.fee, broker_id=row.client_order_id,
                          reason=row.reason)

    def open_orders(self) -> list[OrderState]:
        return []  # market orders fill or are rejected at once

    def cancel(self, client_order_id: str) -> None:
        return None

    def submit_market_order(self, symbol: str, side: str, qty: float,
                            client_order_id: str) -> OrderState:
        existing = self.get_order(client_order_id)
        if existing is not None:
            return existing  # idempotent
        held = self.book["positions"].get(symbol, {"qty": 0.0, "avg": 0.0})
        if side == "sell" and abs(qty - held["qty"]) <= self.increment:
            qty = held["qty"]  # the whole position: no dust left behind
        else:  # to the increment, forgiving float error in qty / increment
            qty = math.floor(qty / self.increment + 1e-6) * self.increment
        price = self.prices.get(symbol)
        reason = None
        if price is None:
            reason = f"no price for {symbol}"
        elif qty < self.min_order_size:
            reason = f"qty {qty} below the minimum {self.min_order_size}"
        elif side == "sell" and qty > held["qty"] + 1e-12:
            reason = f"insufficient qty: {held['qty']} held, {qty} to sell"
        elif side == "buy" and qty * price * (1 + self.slip) * (1 + self.fee) > \
                self.book["cash"] + 1e-9:
            reason = "insufficient balance"
        if reason:
            return self._record(OrderState(client_order_id, symbol, side, qty, 0.0, None,
                                           "rejected", reason=reason))
        fill = price * (1 + self.slip) if side == "buy" else price * (1 - self.slip)
        notional = qty * fill
        fee = notional * self.fee
        book = {"cash": self.book["cash"], "positions": dict(self.book["positions"])}
        if side == "buy":
            book["cash"] -= notional + fee
            total = held["qty"] + qty
            avg = (held["qty"] * held["avg"] + qty * fill) / total
            book["positions"][symbol] = {"qty": total, "avg": avg}
        else:
            book["cash"] += notional - fee
            left = held["qty"] - qty
            if left < self.increment:
                book["positions"].pop(symbol, None)
            else:
                book["positions"][symbol] = {"qty": left, "avg": held["avg"]}
        order = OrderState(client_order_id, symbol, side, qty, qty, fill, "filled", fee,
                           broker_id=client_order_id)
        with self.engine.begin() as conn:  # order and book change in one transaction
            self._record(order, conn)
            self._save_book(book, conn)
        self.book = book
        return order

    def _record(self, order: OrderState, conn=None) -> OrderState:
        values = dict(client_order_id=order.client_order_id, symbol=order.symbol,
                      side=order.side, qty=order.qty, filled_qty=order.filled_qty,
                      price=order.filled_avg_price, fee=order.fee, status=order.status,
                      reason=order.reason)
        if conn is not None:
            conn.execute(sim_orders.insert().values(**values))
        else:
            with self.engine.begin() as c:
                c.execute(sim_orders.insert().values(**values))
        return order
