"""Bars from Alpaca's historical crypto data API through alpaca-py.

No keys are needed for crypto bars. alpaca-py follows `next_page_token` itself; every request
goes through `AlpacaCalls` (alpaca_http.py): a timeout, the rate limit, 429s retried when the
server says, 5xx answers and network errors with exponential backoff.

Alpaca emits no bar for an interval without trades (alpaca-py issue #246: a 7-hour BTC/USD
gap), and a late print can still arrive for a recent bar: the cache re-asks a trailing window
of bars on every live fetch (`data.refetch_bars`), and alignment flat-fills a quiet asset's
missing bar instead of holding back the others (data/bars.py).
"""

from __future__ import annotations

import logging

import pandas as pd
from alpaca.data.requests import CryptoBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from ..broker.alpaca_http import AlpacaCalls, crypto_data_client
from .bars import COLUMNS, DataError, empty_frame, utc_index, validate

log = logging.getLogger(__name__)

_TIMEFRAMES = {60: (1, TimeFrameUnit.Minute), 300: (5, TimeFrameUnit.Minute),
               900: (15, TimeFrameUnit.Minute), 3600: (1, TimeFrameUnit.Hour),
               14400: (4, TimeFrameUnit.Hour), 86400: (1, TimeFrameUnit.Day)}


class AlpacaSource:
    name = "alpaca"

    def __init__(self, bar_seconds: int, *, url_override: str | None = None,
                 api_key: str | None = None, secret_key: str | None = None,
                 retry_wait_s: float = 3.0, max_retries: int = 5, timeout_s: float = 30.0,
                 max_jump: float | None = None):
        if bar_seconds not in _TIMEFRAMES:
            raise DataError(f"Alpaca has no {bar_seconds}s bars")
        self.bar_seconds, self.max_jump = bar_seconds, max_jump
        self.timeframe = TimeFrame(*_TIMEFRAMES[bar_seconds])
        self.client = crypto_data_client(api_key, secret_key, url_override, raw_data=True)
        self.calls = AlpacaCalls(timeout_s, max_retries, retry_wait_s)

    def fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars with open time in [start, end), all pages."""
        request = CryptoBarsRequest(symbol_or_symbols=[symbol], timeframe=self.timeframe,
                                    start=start.to_pydatetime(), end=end.to_pydatetime())
        try:
            raw = self.calls(f"{symbol} bars", self.client.get_crypto_bars, request)
        except Exception as e:  # noqa: BLE001 - every failure is a data error here
            raise DataError(f"{symbol}: Alpaca bars request failed: {e}") from e
        rows = raw.get(symbol, [])
        if not rows:
            return empty_frame()
        index = utc_index([r["t"] for r in rows])
        df = pd.DataFrame({c: [float(r[c[0]]) for r in rows] for c in COLUMNS}, index=index)
        df = df[~df.index.duplicated(keep="last")].sort_index()
        validate(symbol, df, self.bar_seconds, self.max_jump)
        return df[(df.index >= start) & (df.index < end)]

    def extent(self, symbol: str) -> None:
        return None  # a live feed: any closed range may hold bars
