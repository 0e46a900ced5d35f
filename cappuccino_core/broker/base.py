"""What the trader needs from a broker, and nothing more."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

FINAL = {"filled", "canceled", "rejected", "expired"}


@dataclass
class Account:
    cash: float
    equity: float
    buying_power: float


@dataclass
class Position:
    symbol: str
    qty: float
    avg_entry_price: float


@dataclass
class AssetRule:
    symbol: str
    min_order_size: float
    min_trade_increment: float
    tradable: bool = True


@dataclass
class OrderState:
    client_order_id: str
    symbol: str
    side: str              # buy | sell
    qty: float             # requested, in the asset's units
    filled_qty: float
    filled_avg_price: float | None
    status: str            # new | partially_filled | filled | canceled | rejected | expired
    fee: float = 0.0
    broker_id: str | None = None
    reason: str | None = None  # why it was rejected

    @property
    def final(self) -> bool:
        return self.status in FINAL


class Broker(Protocol):
    def account(self) -> Account: ...

    def positions(self) -> dict[str, Position]: ...

    def asset_rules(self, symbols: list[str]) -> dict[str, AssetRule]: ...

    def latest_prices(self, symbols: list[str]) -> dict[str, float]: ...

    def submit_market_order(self, symbol: str, side: str, qty: float,
                            client_order_id: str) -> OrderState: ...

    def get_order(self, client_order_id: str) -> OrderState | None: ...

    def open_orders(self) -> list[OrderState]: ...

    def cancel(self, client_order_id: str) -> None: ...
