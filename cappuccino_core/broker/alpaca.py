"""Alpaca's paper account through alpaca-py: real orders, never doubled.

- Keys come from systemd credentials (`$CREDENTIALS_DIRECTORY/alpaca_key_id` and
  `alpaca_secret_key`, see `LoadCredential=`), else the environment (`APCA_API_KEY_ID`,
  `APCA_API_SECRET_KEY`), else the config (discouraged). They are never logged.
- Every HTTP call has a timeout. HTTP 429 is retried by alpaca-py after `retry_wait_s`; 5xx
  answers and network errors are retried here with exponential backoff.
- An order whose outcome is unknown (a timeout or a 5xx after sending it) is looked up by its
  client order id BEFORE any resubmission, so a lost answer can never double an order; a
  "client_order_id must be unique" answer is resolved the same way.
- Rejections (insufficient balance, below the minimum size) come back as a rejected order with
  Alpaca's message; partial fills are followed until final or `fill_timeout_s`, then the rest
  is canceled.
- Crypto positions come back as `BTCUSD`; they are mapped to the configured `BTC/USD`.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoLatestTradeRequest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import MarketOrderRequest

from ..data.alpaca_source import apply_timeout
from .base import Account, AssetRule, OrderState, Position

log = logging.getLogger(__name__)


class BrokerUnavailable(Exception):
    """Alpaca could not be reached after every retry."""


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


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    # 429s alpaca-py has already retried (at a fixed pace) come here: back off harder
    return isinstance(exc, APIError) and ((exc.status_code or 0) >= 500
                                          or exc.status_code == 429)


class AlpacaBroker:
    def __init__(self, api_key: str, secret_key: str, symbols: list[str],
                 url_override: str | None = None, data_url_override: str | None = None,
                 fee: float = 0.0025, timeout_s: float = 10.0, retry_wait_s: float = 1.0,
                 max_retries: int = 4, fill_timeout_s: float = 30.0, poll_s: float = 0.5):
        self.trading = TradingClient(api_key, secret_key, paper=True, url_override=url_override)
        self.data = CryptoHistoricalDataClient(api_key, secret_key,
                                               url_override=data_url_override or url_override)
        for client in (self.trading, self.data):
            client._retry_wait = retry_wait_s  # alpaca-py's own 429 wait (no public setting)
            apply_timeout(client._session, timeout_s)
        self.symbols = list(symbols)
        self.by_plain = {s.replace("/", ""): s for s in symbols}
        self.fee, self.retry_wait_s, self.max_retries = fee, retry_wait_s, max_retries
        self.fill_timeout_s, self.poll_s = fill_timeout_s, poll_s
        self._assets: dict | None = None  # the crypto asset list, asked for once

    @classmethod
    def from_config(cls, cfg) -> "AlpacaBroker":
        key, secret = read_keys(cfg)
        return cls(key, secret, cfg.data.symbols, url_override=cfg.broker.url_override,
                   fee=cfg.broker.taker_fee)

    # --- plumbing --------------------------------------------------------------------------

    def _call(self, what: str, fn, *args):
        for attempt in range(self.max_retries + 1):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - filtered just below
                if not _retryable(e) or attempt == self.max_retries:
                    raise
                wait = self.retry_wait_s * 2**attempt
                log.warning("Alpaca %s failed (%s); retrying in %.1fs", what,
                            type(e).__name__, wait)
                time.sleep(wait)

    def _state(self, o) -> OrderState:
        filled = float(o.filled_qty or 0)
        price = float(o.filled_avg_price) if o.filled_avg_price else None
        return OrderState(o.client_order_id, o.symbol if "/" in o.symbol else
                          self.by_plain.get(o.symbol, o.symbol), o.side.value, float(o.qty or 0),
                          filled, price, o.status.value,
                          fee=filled * (price or 0) * self.fee, broker_id=str(o.id))

    # --- the Broker interface --------------------------------------------------------------

    def account(self) -> Account:
        a = self._call("account", self.trading.get_account)
        return Account(float(a.cash), float(a.equity), float(a.buying_power))

    def positions(self) -> dict[str, Position]:
        out = {}
        for p in self._call("positions", self.trading.get_all_positions):
            symbol = self.by_plain.get(p.symbol.replace("/", ""), p.symbol)
            out[symbol] = Position(symbol, float(p.qty), float(p.avg_entry_price))
        return out

    def asset_rules(self, symbols: list[str]) -> dict[str, AssetRule]:
        """Minimum size, increments and tradability per symbol, from ONE call for the whole
        crypto asset list (`GET /v2/assets?asset_class=crypto`, cached): asking for one asset
        by its `BTC/USD` name would put a slash in the path. A symbol Alpaca does not list is
        not tradable (and said so)."""
        if self._assets is None:
            from alpaca.trading.enums import AssetClass
            from alpaca.trading.requests import GetAssetsRequest
            listed = self._call("assets", self.trading.get_all_assets,
                                GetAssetsRequest(asset_class=AssetClass.CRYPTO))
            self._assets = {a.symbol: a for a in listed}
        rules = {}
        for s in symbols:
            a = self._assets.get(s) or self._assets.get(s.replace("/", ""))
            if a is None:
                log.warning("Alpaca lists no crypto asset %s: it is not traded", s)
                rules[s] = AssetRule(s, 0.0, 1e-9, tradable=False)
                continue
            rules[s] = AssetRule(s, float(a.min_order_size or 0),
                                 float(a.min_trade_increment or 1e-9), bool(a.tradable),
                                 float(a.price_increment) if a.price_increment else None)
        return rules

    def mark(self, prices: dict[str, float]) -> None:
        """Alpaca has its own market: the trader's clock prices change nothing here."""

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
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest
        orders = self._call("open orders", self.trading.get_orders,
                            GetOrdersRequest(status=QueryOrderStatus.OPEN))
        return [self._state(o) for o in orders]

    def cancel(self, client_order_id: str) -> None:
        order = self.get_order(client_order_id)
        if order is not None and not order.final:
            self._call("cancel", self.trading.cancel_order_by_id, order.broker_id)

    def submit_market_order(self, symbol: str, side: str, qty: float,
                            client_order_id: str) -> OrderState:
        request = MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide(side),
                                     time_in_force=TimeInForce.GTC,
                                     client_order_id=client_order_id)
        for attempt in range(self.max_retries + 1):
            try:
                return self._state(self.trading.submit_order(request))
            except Exception as e:  # noqa: BLE001 - every branch below decides
                if isinstance(e, APIError) and e.status_code in (403, 422):
                    if "client_order_id" in str(e):  # sent before: it exists
                        known = self.get_order(client_order_id)
                        if known is not None:
                            return known
                    return OrderState(client_order_id, symbol, side, qty, 0.0, None,
                                      "rejected", reason=_message(e))
                if not _retryable(e) or attempt == self.max_retries:
                    raise BrokerUnavailable(f"order {client_order_id}: {e}") from e
                # The outcome is unknown: look it up before anything is sent again.
                known = self.get_order(client_order_id)
                if known is not None:
                    log.warning("order %s: %s, but the broker has it (%s)", client_order_id,
                                type(e).__name__, known.status)
                    return known
                wait = self.retry_wait_s * 2**attempt
                log.warning("order %s: %s; not at the broker, resending in %.1fs",
                            client_order_id, type(e).__name__, wait)
                time.sleep(wait)
        raise BrokerUnavailable(f"order {client_order_id}: no answer")

    def wait_for_fill(self, order: OrderState) -> OrderState:
        """Follow an order until final; past `fill_timeout_s`, cancel what is left."""
        deadline = time.monotonic() + self.fill_timeout_s
        while not order.final and time.monotonic() < deadline:
            time.sleep(self.poll_s)
            order = self.get_order(order.client_order_id) or order
        if not order.final:
            log.warning("order %s still %s after %.0fs: canceling the rest",
                        order.client_order_id, order.status, self.fill_timeout_s)
            self.cancel(order.client_order_id)
            order = self.get_order(order.client_order_id) or order
        return order


def _message(e: APIError) -> str:
    try:
        return e.message
    except Exception:  # noqa: BLE001 - a non-JSON body
        return str(e)
