"""What the trader needs from a broker, and nothing more."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class OrderStatus(str, enum.Enum):
    """Our journal's statuses: three of our own, then Alpaca's order statuses
    (https://docs.alpaca.markets/docs/orders-at-alpaca#order-lifecycle)."""
    PENDING_SUBMIT = "pending_submit"  # journaled, about to be sent
    NOT_SENT = "not_sent"              # journaled, but the broker never received it (a crash)
    SKIPPED = "skipped"                # planned, below the asset's minimum: never sent
    NEW = "new"
    ACCEPTED = "accepted"
    PENDING_NEW = "pending_new"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    PARTIALLY_FILLED = "partially_filled"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    PENDING_REVIEW = "pending_review"
    CALCULATED = "calculated"
    HELD = "held"
    SUSPENDED = "suspended"
    STOPPED = "stopped"
    DONE_FOR_DAY = "done_for_day"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    REPLACED = "replaced"

    @property
    def final(self) -> bool:
        return self in FINAL


# Alpaca's terminal statuses (nothing more will happen to the order), and our own two.
# done_for_day, stopped, suspended, held... are not: the order may still fill; it is followed
# until `fill_timeout_s`, then what is left is canceled.
FINAL = {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED,
         OrderStatus.REPLACED, OrderStatus.NOT_SENT, OrderStatus.SKIPPED}


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
    price_increment: float | None = None  # for orders that send a price (limit orders)
    min_notional: float = 0.0  # the venue's minimum order value, USD: below it, dust


@dataclass
class OrderState:
    client_order_id: str
    symbol: str
    side: str              # buy | sell
    qty: float             # requested, in the asset's units
    filled_qty: float
    filled_avg_price: float | None
    status: OrderStatus
    fee: float = 0.0       # in USD (a buy's fee valued at its fill price)
    broker_id: str | None = None
    reason: str | None = None  # why it was rejected
    fee_qty: float = 0.0   # a buy's fee, taken from the asset received
    fee_basis: str = "measured"  # measured (the account moved by it) | estimated | booked
    fee_deferred: bool = False   # the account had not paid it at the fill: posted later

    def __post_init__(self):
        self.status = OrderStatus(self.status)

    @property
    def final(self) -> bool:
        return self.status.final


@dataclass
class FeeBooking:
    """A fee the broker booked after the fact (Alpaca: a `CFEE` account activity, posted at the
    end of the day, not tied to an order): what it took from one asset's position, and in
    USD."""
    activity_id: str
    date: str              # YYYY-MM-DD, the trades' day
    symbol: str            # as configured (BTC/USD)
    side: str              # buy (taken from the asset received) | sell (from the USD)
    qty: float             # units taken from the asset (>= 0)
    usd: float             # USD taken from the cash (>= 0)
    price: float | None = None  # the asset's price the fee was valued at


class Broker(Protocol):
    """Everything the trader calls; both brokers implement all of it."""

    books_fees_later: bool  # fees are booked after the fill (`fee_bookings` has something)

    def account(self) -> Account: ...

    def positions(self) -> dict[str, Position]: ...

    def asset_rules(self, symbols: list[str], refresh: bool = False) -> dict[str, AssetRule]:
        """Each symbol's order-size rules; `refresh` asks the venue again (not a cache)."""

    def latest_prices(self, symbols: list[str]) -> dict[str, float]: ...

    def mark(self, prices: dict[str, float], at=None) -> None:
        """The prices of the moment `at` on the trader's clock (the closed bar's close live,
        the next open in a replay). A simulated broker fills and values at them; a real one
        has its own market and ignores them."""

    def fee_bookings(self, since: str) -> list[FeeBooking]:
        """Fees booked after the fact for trades on or after the day `since` (YYYY-MM-DD);
        none where fees are charged at the fill and nothing is posted later."""

    def submit_market_order(self, symbol: str, side: str, qty: float,
                            client_order_id: str) -> OrderState: ...

    def wait_for_fill(self, order: OrderState) -> OrderState:
        """Follow a submitted order until it is final (or give up and cancel the rest)."""

    def get_order(self, client_order_id: str) -> OrderState | None: ...

    def open_orders(self) -> list[OrderState]: ...

    def cancel(self, client_order_id: str) -> None: ...
