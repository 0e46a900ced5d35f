"""Calling Alpaca through alpaca-py's public API only: timeouts, the rate limit, retries.

- Clients are built with the public constructor arguments of alpaca-py's `RESTClient`, with a
  retry list no HTTP status matches: alpaca-py's own 429 retry sleeps a fixed time and never
  reads the server's headers, so every error comes back here instead.
- alpaca-py has no request timeout setting: each call runs on a worker thread and is given up
  after `timeout_s` (the answer, if it comes, is dropped; an order is then looked up by its
  client order id before anything is sent again, see broker/alpaca.py).
- Alpaca allows 200 requests per minute per account ("API is throttled, currently 200
  requests per minute, per account": https://alpaca.markets/support/usage-limit-api-calls/).
  A sliding window keeps this process under `per_minute`.
- A 429 is retried after the server's `Retry-After` seconds if it sent one, else at its
  `X-Ratelimit-Reset` (epoch seconds; "Pause until that time and then continue":
  https://forum.alpaca.markets/t/executing-orders/12029), else with exponential backoff, as
  are 5xx answers and network errors. Other errors are raised at once.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import requests
from alpaca.common.enums import BaseURL
from alpaca.common.exceptions import APIError
from alpaca.common.rest import RESTClient
from alpaca.data.historical import CryptoHistoricalDataClient
from alpaca.trading.client import TradingClient

log = logging.getLogger(__name__)

NO_STATUS = [0]  # a "retry on these HTTP statuses" list that matches none


class _TradingClient(TradingClient):
    def __init__(self, api_key, secret_key, url_override=None):
        RESTClient.__init__(self, api_key=api_key, secret_key=secret_key, api_version="v2",
                            base_url=url_override or BaseURL.TRADING_PAPER, sandbox=True,
                            raw_data=False, retry_exception_codes=NO_STATUS)


class _CryptoDataClient(CryptoHistoricalDataClient):
    def __init__(self, api_key, secret_key, url_override=None, raw_data=False):
        RESTClient.__init__(self, api_key=api_key, secret_key=secret_key,
                            api_version="v1beta3", base_url=url_override or BaseURL.DATA,
                            raw_data=raw_data, retry_exception_codes=NO_STATUS)


def trading_client(api_key, secret_key, url_override=None) -> TradingClient:
    """A paper-trading client that leaves every retry to `AlpacaCalls`."""
    return _TradingClient(api_key, secret_key, url_override)


def crypto_data_client(api_key, secret_key, url_override=None,
                       raw_data=False) -> CryptoHistoricalDataClient:
    """A crypto market-data client that leaves every retry to `AlpacaCalls`."""
    return _CryptoDataClient(api_key, secret_key, url_override, raw_data)


class RateLimiter:
    """At most `limit` calls in any `window_s` seconds; `acquire` waits for room. A 429 pauses
    every caller until the time the server named. The window is kept 5% longer than the
    server's: our clock starts before a request travels, the server's when it arrives."""

    def __init__(self, limit: int = 200, window_s: float = 60.0):
        self.limit, self.window_s = limit, window_s * 1.05
        self.calls: collections.deque[float] = collections.deque()
        self.paused_until = 0.0
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                while self.calls and self.calls[0] <= now - self.window_s:
                    self.calls.popleft()
                wait = self.paused_until - now
                if wait <= 0 and len(self.calls) < self.limit:
                    self.calls.append(now)
                    return
                if wait <= 0:
                    wait = self.calls[0] + self.window_s - now
            time.sleep(max(wait, 0.001))

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def retryable(exc: Exception) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    status = exc.status_code if isinstance(exc, APIError) else None
    return status is not None and (status >= 500 or status == 429)


def server_wait(exc: Exception, now: float | None = None) -> float | None:
    """Seconds a 429 answer asked us to wait (`Retry-After`, else `X-Ratelimit-Reset`)."""
    response = exc.response if isinstance(exc, APIError) else None
    if response is None or response.status_code != 429:
        return None
    headers = response.headers
    try:
        if headers.get("Retry-After"):
            return max(float(headers["Retry-After"]), 0.0)
        # the window's reset matters when the window is spent (not for a 429 of another cause)
        if headers.get("X-Ratelimit-Reset") and headers.get("X-Ratelimit-Remaining", "0") == "0":
            return max(float(headers["X-Ratelimit-Reset"]) - (now or time.time()), 0.0)
    except ValueError:
        return None
    return None


class AlpacaCalls:
    """Every request to one Alpaca API goes through one of these."""

    def __init__(self, timeout_s: float = 10.0, max_retries: int = 4, retry_wait_s: float = 1.0,
                 per_minute: int = 200, window_s: float = 60.0, max_wait_s: float = 120.0):
        self.timeout_s, self.max_retries, self.retry_wait_s = timeout_s, max_retries, retry_wait_s
        self.max_wait_s = max_wait_s
        self.limiter = RateLimiter(per_minute, window_s)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="alpaca")

    def once(self, what: str, fn, *args):
        """One request within the rate limit and the timeout (raises requests.Timeout). A
        request still waiting for a worker thread when its time is up is never sent: only one
        already on its way can still arrive (and an order is looked up before any resend)."""
        self.limiter.acquire()
        gate = threading.Lock()
        state = {"started": False, "abandoned": False}

        def run():
            with gate:
                if state["abandoned"]:
                    return None  # given up before it left: never sent
                state["started"] = True
            return fn(*args)

        future = self.pool.submit(run)
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            with gate:
                state["abandoned"] = not state["started"]
            raise requests.Timeout(f"Alpaca {what}: no answer in {self.timeout_s:g} s") from None

    def wait_after(self, exc: Exception, attempt: int) -> float:
        """How long to wait before retrying after `exc` (the server's word first)."""
        asked = server_wait(exc)
        if asked is not None:
            self.limiter.pause(asked)
            return min(asked, self.max_wait_s)
        return min(self.retry_wait_s * 2**attempt, self.max_wait_s)

    def __call__(self, what: str, fn, *args):
        """The request, retried (bounded) on rate limits, server errors and network errors."""
        for attempt in range(self.max_retries + 1):
            try:
                return self.once(what, fn, *args)
            except Exception as e:  # noqa: BLE001 - filtered just below
                if not retryable(e) or attempt == self.max_retries:
                    raise
                wait = self.wait_after(e, attempt)
                log.warning("Alpaca %s failed (%s); retrying in %.1fs", what,
                            type(e).__name__, wait)
                time.sleep(wait)
