"""Bars from Alpaca's historical crypto data API through alpaca-py.

No keys are needed for crypto bars. alpaca-py follows `next_page_token` itself and retries HTTP
429 (and 504) after `retry_wait_s`; on top of that this source retries 5xx answers and network
errors with exponential backoff, and gives every HTTP call a timeout (alpaca-py sets none, so a
dead connection would otherwise hang the caller forever).
"""

from __future__ import annotations

import logging
import time

import pandas as pd
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.data.requests import CryptoBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from requests.adapters import HTTPAdapter

from .bars import COLUMNS, DataError, empty_frame, utc_index, validate

log = logging.getLogger(__name__)

_TIMEFRAMES = {60: (1, TimeFrameUnit.Minute), 300: (5, TimeFrameUnit.Minute),
               900: (15, TimeFrameUnit.Minute), 3600: (1, TimeFrameUnit.Hour),
               14400: (4, TimeFrameUnit.Hour), 86400: (1, TimeFrameUnit.Day)}


class TimeoutAdapter(HTTPAdapter):
    """Applies a default timeout to every request sent through a requests Session."""

    def __init__(self, timeout_s: float, **kwargs):
        self.timeout_s = timeout_s
        super().__init__(**kwargs)

    def send(self, request, **kwargs):
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout_s
        return super().send(request, **kwargs)


def apply_timeout(session: requests.Session, timeout_s: float) -> None:
    for prefix in ("http://", "https://"):
        session.mount(prefix, TimeoutAdapter(timeout_s))


def _is_retryable(exc: Exception) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, APIError) and status is not None and (status >= 500 or status == 429)


class AlpacaSource:
    name = "alpaca"

    def __init__(self, bar_seconds: int, *, url_override: str | None = None,
                 api_key: str | None = None, secret_key: str | None = None,
                 retry_wait_s: float = 3.0, max_retries: int = 5, timeout_s: float = 30.0):
        if bar_seconds not in _TIMEFRAMES:
            raise DataError(f"Alpaca has no {bar_seconds}s bars")
        self.bar_seconds = bar_seconds
        self.timeframe = TimeFrame(*_TIMEFRAMES[bar_seconds])
        self.client = CryptoHistoricalDataClient(api_key, secret_key, raw_data=True,
                                                 url_override=url_override)
        # alpaca-py has no public setting for its 429 wait; it is the same attribute its
        # constructor sets from DEFAULT_RETRY_WAIT_SECONDS.
        self.client._retry_wait = retry_wait_s
        apply_timeout(self.client._session, timeout_s)
        self.max_retries = max_retries
        self.retry_wait_s = retry_wait_s

    def fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Bars with open time in [start, end), all pages."""
        request = CryptoBarsRequest(symbol_or_symbols=[symbol], timeframe=self.timeframe,
                                    start=start.to_pydatetime(), end=end.to_pydatetime())
        for attempt in range(self.max_retries + 1):
            try:
                raw = self.client.get_crypto_bars(request)
                break
            except Exception as e:  # noqa: BLE001 - filtered just below
                if not _is_retryable(e) or attempt == self.max_retries:
                    raise DataError(f"{symbol}: Alpaca bars request failed: {e}") from e
                wait = self.retry_wait_s * 2**attempt
                log.warning("%s: Alpaca bars request failed (%s), retrying in %.1fs",
                            symbol, e, wait)
                time.sleep(wait)
        rows = raw.get(symbol, [])
        if not rows:
            return empty_frame()
        index = utc_index([r["t"] for r in rows])
        df = pd.DataFrame({c: [float(r[c[0]]) for r in rows] for c in COLUMNS}, index=index)
        df = df[~df.index.duplicated(keep="last")].sort_index()
        validate(symbol, df, self.bar_seconds)
        return df[(df.index >= start) & (df.index < end)]

    def extent(self, symbol: str) -> None:
        return None  # a live feed: any closed range may hold bars
