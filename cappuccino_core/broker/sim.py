"""The built-in simulated broker: the embedded default when no Alpaca keys are configured.

Market orders fill at once at the current price (`mark()` sets it: the next bar's open in a
replay, the latest close live) moved against the trader by `slippage_bps`, and pay `taker_fee`
as Alpaca charges crypto and the training environment models it: a buy's fee is taken from
the asset received, a sell's from the cash proceeds. Minimum sizes and increments are
enforced. Each account's cash and positions live in their own table (`cappuccino_sim_accounts`)
and its orders in `cappuccino_sim_orders`, so the book survives restarts, and a client order id
that was seen before returns the order it named: submitting twice never trades twice.
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..storage.database import sim_accounts, sim_orders
from .base import Account, AssetRule, OrderState, OrderStatus, Position


class SimBroker:
    books_fees_later = False  # each fee is charged at its fill
    def __init__(self, engine: Engine, initial_cash: float, fee: float, slippage_bps: float,
                 min_order_size: float = 1e-6, min_trade_increment: float = 1e-9,
                 account: str = "paper"):
        self.engine, self.fee, self.slip = engine, fee, slippage_bps * 1e-4
        self.min_order_size, self.increment = min_order_size, min_trade_increment
        self.account_name = account
        self.prices: dict[str, float] = {}
        book = self._load_book()
        if book is None:
            book = {"cash": initial_cash, "positions": {}}
            with self.engine.begin() as conn:
                self._save_book(book, conn)
        self.book = book

    @classmethod
    def from_config(cls, cfg, engine: Engine, account: str = "paper") -> "SimBroker":
        return cls(engine, cfg.broker.initial_cash, cfg.broker.taker_fee,
                   cfg.broker.slippage_bps, account=account)

    # --- persistence ---------------------------------------------------------------------

    def _load_book(self) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sim_accounts.c.cash, sim_accounts.c.positions).where(
                sim_accounts.c.account == self.account_name)).first()
        return None if row is None else {"cash": row.cash, "positions": dict(row.positions)}

    def _save_book(self, book: dict, conn) -> None:
        values = {"cash": book["cash"], "positions": book["positions"]}
        updated = conn.execute(sim_accounts.update().where(
            sim_accounts.c.account == self.account_name).values(**values)).rowcount
        if not updated:
            conn.execute(sim_accounts.insert().values(account=self.account_name, **values))

    def reset(self, initial_cash: float) -> None:
        """Start this account afresh: its cash, no positions, no orders (a fresh replay)."""
        ours = sa.or_(*(sim_orders.c.client_order_id.startswith(f"cap-{self.account_name}-{p}-")
                        for p in ("rebalance", "stop")))
        with self.engine.begin() as conn:
            conn.execute(sim_orders.delete().where(ours))
            self.book = {"cash": initial_cash, "positions": {}}
            self._save_book(self.book, conn)

    # --- prices --------------------------------------------------------------------------

    def mark(self, prices: dict[str, float], at=None) -> None:
        """Set the prices orders fill at and positions are valued at."""
        self.prices.update({s: float(p) for s, p in prices.items()})  # no numpy into the DB

    def fee_bookings(self, since: str) -> list:
        """None: this broker charges each fee at its fill, nothing is posted later."""
        return []

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

    def asset_rules(self, symbols: list[str], refresh: bool = False) -> dict[str, AssetRule]:
        return {s: AssetRule(s, self.min_order_size, self.increment) for s in symbols}

    def get_order(self, client_order_id: str) -> OrderState | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(sim_orders).where(
                sim_orders.c.client_order_id == client_order_id)).first()
        if row is None:
            return None
        fee_qty = row.fee / row.price if row.side == "buy" and row.price else 0.0
        return OrderState(row.client_order_id, row.symbol, row.side, row.qty, row.filled_qty,
                          row.price, OrderStatus(row.status), row.fee,
                          broker_id=row.client_order_id, reason=row.reason, fee_qty=fee_qty)

    def open_orders(self) -> list[OrderState]:
        return []  # market orders fill or are rejected at once

    def wait_for_fill(self, order: OrderState) -> OrderState:
        return order  # final already

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
        elif side == "buy" and qty * price * (1 + self.slip) > self.book["cash"] + 1e-9:
            reason = "insufficient balance"
        if reason:
            order = OrderState(client_order_id, symbol, side, qty, 0.0, None,
                               OrderStatus.REJECTED, reason=reason)
            with self.engine.begin() as conn:
                self._record(order, conn)
            return order
        fill = price * (1 + self.slip) if side == "buy" else price * (1 - self.slip)
        notional = qty * fill
        fee = notional * self.fee
        book = {"cash": self.book["cash"], "positions": dict(self.book["positions"])}
        if side == "buy":  # the fee is taken from the asset received
            book["cash"] -= notional
            received = qty * (1 - self.fee)
            total = held["qty"] + received
            avg = (held["qty"] * held["avg"] + received * fill) / total
            book["positions"][symbol] = {"qty": total, "avg": avg}
        else:
            book["cash"] += notional - fee
            left = held["qty"] - qty
            if left < self.increment:
                book["positions"].pop(symbol, None)
            else:
                book["positions"][symbol] = {"qty": left, "avg": held["avg"]}
        order = OrderState(client_order_id, symbol, side, qty, qty, fill, OrderStatus.FILLED,
                           fee, broker_id=client_order_id,
                           fee_qty=qty * self.fee if side == "buy" else 0.0)
        with self.engine.begin() as conn:  # order and book change in one transaction
            self._record(order, conn)
            self._save_book(book, conn)
        self.book = book
        return order

    def _record(self, order: OrderState, conn) -> None:
        conn.execute(sim_orders.insert().values(
            client_order_id=order.client_order_id, symbol=order.symbol, side=order.side,
            qty=order.qty, filled_qty=order.filled_qty, price=order.filled_avg_price,
            fee=order.fee, status=order.status.value, reason=order.reason))
