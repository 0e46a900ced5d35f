"""Alpaca's paper account through alpaca-py: real orders, never doubled.

What Alpaca does that a naive client gets wrong, and what this one does about it (each
behaviour is emulated, with its source, in tests/alpaca_emulator.py):

- Keys come from systemd credentials (`$CREDENTIALS_DIRECTORY/alpaca_key_id` and
  `alpaca_secret_key`, see `LoadCredential=`), else the environment (`APCA_API_KEY_ID`,
  `APCA_API_SECRET_KEY`), else the config (discouraged). They are never logged.
- Requests go through `AlpacaCalls` (alpaca_http.py): a timeout, the 200/min rate limit,
  `Retry-After`/`X-Ratelimit-Reset` honoured, no private alpaca-py attribute touched.
- Quantities are sent as decimal strings, already whole numbers of the pair's
  `min_trade_increment` (trading/orders.py rounds them), never with float noise.
- Orders are asynchronous: the POST answers `pending_new`/`accepted`; `wait_for_fill` polls
  (0.5 s doubling to 5 s, inside the rate limit) until a final status or `fill_timeout_s`,
  then cancels what is left and reads the order once more. Every Alpaca status maps to ours
  (broker/base.py); `replaced` is final for the order it ends.
- An order whose outcome is unknown (a timeout or a 5xx after sending it) is looked up by its
  client order id BEFORE any resubmission, so a lost answer can never double an order; a
  "client_order_id must be unique" answer is resolved the same way.
- A crypto buy's fee is taken from the asset received (alpaca-py issue #374: buying 0.1
  leaves 0.09975), while the order still says `filled_qty` 0.1: the trader measures the fee
  from the position (trading/trader.py), and a full exit sells the position's exact quantity.
  Alpaca books crypto fees as `CFEE` account activities at the end of the day
  (`fee_bookings`); the trader puts them on its fills (trading/journal.py `book_fees`).
- Rejections (insufficient balance, a size off the increment) come back as a rejected order
  with Alpaca's message.
- Crypto positions come back as `BTCUSD`; they are mapped to the configured `BTC/USD`. Asset
  rules come from one asset-list call: `BTC/USD` in a path is two segments (alpaca-py #537).
"""

from __future__ import annotations

import logging
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Optional

import pandas as pd
from alpaca.common.exceptions import APIError
from alpaca.data.requests import CryptoLatestTradeRequest
from alpaca.trading.enums import AssetClass, OrderSide, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    GetAssetsRequest,
    GetOrdersRequest,
    MarketOrderRequest,
)

from ..common.config import ALPACA_MIN_ORDER_VALUE
from ..common.errors import CappuccinoError
from .alpaca_http import AlpacaCalls, crypto_data_client, retryable, trading_client
from .base import Account, AssetRule, FeeBooking, OrderState, OrderStatus, Position

log = logging.getLogger(__name__)


RULES_MAX_AGE_S = 24 * 3600  # the asset list is asked for again after this
ACTIVITY_PAGE = 100  # account activities per page (Alpaca's largest page)


class DecimalMarketOrder(MarketOrderRequest):
    """A market order whose quantity travels as the decimal string we computed (Alpaca's
    `qty` is a string<number>); alpaca-py's float field would be re-serialised from a float."""
    qty: Optional[str] = None


def qty_text(qty: float) -> str:
    """`qty` as the shortest decimal that is exactly it (0.09975, never 0.0997500000001)."""
    return format(Decimal(repr(float(qty))).normalize(), "f")


class BrokerUnavailable(CappuccinoError):
    """Alpaca could not be reached after every retry."""
    label = "broker error"


def read_keys(cfg=None) -> tuple[str, str]:
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred and (Path(cred) / "alpaca_key_id").exists():
        return ((Path(cred) / "alpaca_key_id").read_text().strip(),
                (Path(cred) / "alpaca_secret_key").read_text().strip())
    if os.environ.get("APCA_API_KEY_ID") and os.environ.get("APCA_API_SECRET_KEY"):
        return os.environ["APCA_API_KEY_ID"], os.environ["APCA_API_SECRET_KEY"]
    if cfg is not None and cfg.broker.api_key_id and cfg.broker.api_secret_key:
        return cfg.broker.api_key_id, cfg.broker.api_secret_key
    raise BrokerUnavailable("no Alpaca keys: LoadCredential=alpaca_key_id/alpaca_secret_key, "
                            "or APCA_API_KEY_ID/APCA_API_SECRET_KEY in the environment")


class AlpacaBroker:
    books_fees_later = True  # CFEE activities, at the end of the day
    def __init__(self, api_key: str, secret_key: str, symbols: list[str],
                 url_override: str | None = None, data_url_override: str | None = None,
                 timeout_s: float = 10.0, retry_wait_s: float = 1.0, max_retries: int = 4,
                 fill_timeout_s: float = 30.0, poll_s: float = 0.5, max_poll_s: float = 5.0,
                 requests_per_minute: int = 200, rate_window_s: float = 60.0):
        self.trading = trading_client(api_key, secret_key, url_override)
        self.data = crypto_data_client(api_key, secret_key, data_url_override or url_override)
        self._call = AlpacaCalls(timeout_s, max_retries, retry_wait_s, requests_per_minute,
                                 rate_window_s)
        self.symbols = list(symbols)
        self.by_plain = {s.replace("/", ""): s for s in symbols}
        self.fill_timeout_s, self.poll_s, self.max_poll_s = fill_timeout_s, poll_s, max_poll_s
        self._assets: dict | None = None  # the crypto asset list, and when it was asked for
        self._assets_at = 0.0

    @classmethod
    def from_config(cls, cfg) -> "AlpacaBroker":
        key, secret = read_keys(cfg)
        return cls(key, secret, cfg.data.symbols, url_override=cfg.broker.url_override)

    def _state(self, o) -> OrderState:
        """Alpaca's order as ours. Its fee is not on the order: the trader measures it."""
        filled = float(o.filled_qty or 0)
        price = float(o.filled_avg_price) if o.filled_avg_price else None
        if o.status.value == OrderStatus.REPLACED and o.replaced_by:
            log.warning("order %s was replaced by %s (not by us): followed no further",
                        o.client_order_id, o.replaced_by)
        return OrderState(o.client_order_id, o.symbol if "/" in o.symbol else
                          self.by_plain.get(o.symbol, o.symbol), o.side.value, float(o.qty or 0),
                          filled, price, o.status.value, broker_id=str(o.id))

    # --- the Broker interface --------------------------------------------------------------

    def account(self) -> Account:
        a = self._call("account", self.trading.get_account)
        # crypto is bought with non-marginable buying power ("Crypto Spot Trading", Alpaca's
        # docs: crypto cannot be bought on margin); older answers lack the field
        power = a.non_marginable_buying_power or a.buying_power
        return Account(float(a.cash), float(a.equity), float(power))

    def positions(self) -> dict[str, Position]:
        out = {}
        for p in self._call("positions", self.trading.get_all_positions):
            symbol = self.by_plain.get(p.symbol.replace("/", ""), p.symbol)
            out[symbol] = Position(symbol, float(p.qty), float(p.avg_entry_price))
        return out

    def asset_rules(self, symbols: list[str], refresh: bool = False) -> dict[str, AssetRule]:
        """Minimum size, increments and tradability per symbol, from ONE call for the whole
        crypto asset list (`GET /v2/assets?asset_class=crypto`): asking for one asset by its
        `BTC/USD` name would put a slash in the path. A symbol Alpaca does not list is not
        tradable (and said so). Alpaca changes these over time: the list is asked for again
        once a day, and at once when `refresh` (after a rejection that names them)."""
        stale = time.monotonic() - self._assets_at > RULES_MAX_AGE_S
        if self._assets is None or refresh or stale:
            listed = self._call("assets", self.trading.get_all_assets,
                                GetAssetsRequest(asset_class=AssetClass.CRYPTO))
            self._assets = {a.symbol: a for a in listed}
            self._assets_at = time.monotonic()
        rules = {}
        for s in symbols:
            a = self._assets.get(s) or self._assets.get(s.replace("/", ""))
            if a is None:
                log.warning("Alpaca lists no crypto asset %s: it is not traded", s)
                rules[s] = AssetRule(s, 0.0, 1e-9, tradable=False)
                continue
            rules[s] = AssetRule(s, float(a.min_order_size or 0),
                                 float(a.min_trade_increment or 1e-9), bool(a.tradable),
                                 float(a.price_increment) if a.price_increment else None,
                                 min_notional=ALPACA_MIN_ORDER_VALUE)
        return rules

    def mark(self, prices: dict[str, float], at=None) -> None:
        """Alpaca has its own market: the trader's clock prices change nothing here."""

    def fee_bookings(self, since: str) -> list[FeeBooking]:
        """The crypto fees Alpaca booked for trades on or after the day `since`: its `CFEE`
        account activities (https://alpaca.markets/docs/crypto/activities/: "Fees are
        currently calculated and posted end of day"), oldest first, every page. alpaca-py
        0.44 has no call for account activities, so its public `get` reads the endpoint
        (`GET /v2/account/activities/CFEE`), and the objects are read here: the trading API's
        carry no `account_id`, which alpaca-py's NonTradeActivity model requires."""
        out, token = [], None
        while True:
            # `after` is exclusive: the day before `since`
            params = {"after": str(pd.Timestamp(since).date() - pd.Timedelta(days=1)),
                      "direction": "asc", "page_size": ACTIVITY_PAGE}
            if token:
                params["page_token"] = token
            page = self._call("fee activities", self.trading.get,
                              "/account/activities/CFEE", params) or []
            out += [self._booking(a) for a in page if a.get("activity_type") == "CFEE"]
            if len(page) < ACTIVITY_PAGE:
                return out
            token = page[-1]["id"]

    def _booking(self, a: dict) -> FeeBooking:
        """One CFEE activity as ours: `qty` (negative) is what was taken from the asset,
        `net_amount` (negative) what was taken in USD; "(Non USD)" in its description marks
        a fee on the asset received, a buy's (Alpaca's example: qty "-0.000195",
        net_amount "0", "Coin Pair Transaction Fee (Non USD)")."""
        plain = str(a.get("symbol") or "").replace("/", "")
        qty, usd = -float(a.get("qty") or 0), -float(a.get("net_amount") or 0)
        side = "buy" if "non usd" in str(a.get("description", "")).lower() or qty > 0 \
            else "sell"
        return FeeBooking(str(a["id"]), str(a["date"])[:10], self.by_plain.get(plain, plain),
                          side, max(qty, 0.0), max(usd, 0.0),
                          float(a["price"]) if a.get("price") else None)

    def latest_prices(self, symbols: list[str]) -> dict[str, float]:
        trades = self._call("latest trades", self.data.get_crypto_latest_trade,
                            CryptoLatestTradeRequest(symbol_or_symbols=symbols))
        return {s: float(t.price) for s, t in trades.items()}

    def get_order(self, client_order_id: str) -> OrderState | None:
        try:
            o = self._call("order lookup", self.trading.get_order_by_client_id, client_order_id)
        except APIError as e:
            if e.status_code == 404:
                return None
            raise
        return self._state(o)

    def open_orders(self) -> list[OrderState]:
        orders = self._call("open orders", self.trading.get_orders,
                            GetOrdersRequest(status=QueryOrderStatus.OPEN))
        return [self._state(o) for o in orders]

    def cancel(self, client_order_id: str) -> None:
        """Ask Alpaca to cancel what is left of the order. An order that filled (or ended)
        between our read and the DELETE is answered 422 "not cancelable": its real state is
        what the caller reads next, not an error."""
        order = self.get_order(client_order_id)
        if order is not None and not order.final:
            try:
                self._call("cancel", self.trading.cancel_order_by_id, order.broker_id)
            except APIError as e:
                if e.status_code not in (404, 422):
                    raise
                log.info("order %s: the cancel was answered %s (%s); following its state",
                         client_order_id, e.status_code, _message(e))

    def submit_market_order(self, symbol: str, side: str, qty: float,
                            client_order_id: str) -> OrderState:
        """Send the order (asynchronous at Alpaca: usually answered `pending_new`)."""
        request = DecimalMarketOrder(symbol=symbol, qty=qty_text(qty), side=OrderSide(side),
                                     time_in_force=TimeInForce.GTC,
                                     client_order_id=client_order_id)
        for attempt in range(self._call.max_retries + 1):
            try:
                return self._state(self._call.once("order", self.trading.submit_order, request))
            except Exception as e:  # noqa: BLE001 - every branch below decides
                if isinstance(e, APIError) and e.status_code in (403, 422):
                    # Never "rejected" on an error answer alone: Alpaca has answered an error
                    # for an order that went through (alpacahq/Alpaca-API#270), and a
                    # duplicate id means it was sent before. Only an order it does not
                    # have is rejected.
                    known = self.get_order(client_order_id)
                    if known is not None:
                        log.warning("order %s: answered %s (%s), but the broker has it (%s)",
                                    client_order_id, e.status_code, _message(e),
                                    known.status.value)
                        return known
                    return OrderState(client_order_id, symbol, side, qty, 0.0, None,
                                      "rejected", reason=_message(e))
                if not retryable(e) or attempt == self._call.max_retries:
                    raise BrokerUnavailable(f"order {client_order_id}: {e}") from e
                # The outcome is unknown: look it up before anything is sent again.
                known = self.get_order(client_order_id)
                if known is not None:
                    log.warning("order %s: %s, but the broker has it (%s)", client_order_id,
                                type(e).__name__, known.status.value)
                    return known
                wait = self._call.wait_after(e, attempt)
                log.warning("order %s: %s; not at the broker, resending in %.1fs",
                            client_order_id, type(e).__name__, wait)
                time.sleep(wait)
        raise BrokerUnavailable(f"order {client_order_id}: no answer")

    def wait_for_fill(self, order: OrderState) -> OrderState:
        """Follow an order until final, polling 0.5 s doubling to `max_poll_s` (a handful of
        requests per order, inside the rate limit); past `fill_timeout_s`, cancel what is left
        and read the order until the cancel is final (bounded the same way)."""
        order = self._poll(order, self.fill_timeout_s)
        if not order.final:
            log.warning("order %s still %s after %.0fs: canceling the rest",
                        order.client_order_id, order.status.value, self.fill_timeout_s)
            self.cancel(order.client_order_id)
            order = self._poll(order, max(self.max_poll_s, 5 * self.poll_s), first=0.0)
        if not order.final:
            log.error("order %s still %s after the cancel: the next start resolves it",
                      order.client_order_id, order.status.value)
        return order

    def _poll(self, order: OrderState, seconds: float, first: float | None = None) -> OrderState:
        deadline = time.monotonic() + seconds
        wait = self.poll_s if first is None else first
        while not order.final and time.monotonic() < deadline:
            time.sleep(min(wait, max(deadline - time.monotonic(), 0.0)))
            order = self.get_order(order.client_order_id) or order
            wait = min(max(wait, self.poll_s) * 2, self.max_poll_s)
        return order


def _message(e: APIError) -> str:
    try:
        return e.message
    except Exception:  # noqa: BLE001 - a non-JSON body
        return str(e)
