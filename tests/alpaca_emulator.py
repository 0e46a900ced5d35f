"""A local HTTP emulator of the Alpaca endpoints that alpaca-py calls, for tests.

The real alpaca-py clients are pointed at it with `url_override`. Shapes follow Alpaca's market
data API v1beta3 (`GET /v1beta3/crypto/us/bars`: `{"bars": {symbol: [{t,o,h,l,c,v,n,vw}]},
"next_page_token": ...}`, paginated across symbols in symbol, time order).

Faults are switchable per test: `emulator.fail_next(429, times=1)` answers the next request(s)
with that status before serving normally. Every request is logged in `emulator.requests`.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd


@dataclass
class AlpacaEmulator:
    bars: dict[str, pd.DataFrame] = field(default_factory=dict)  # symbol -> OHLCV by open time
    page_size_cap: int = 10_000
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    _faults: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, times: int = 1) -> None:
        with self._lock:
            self._faults.extend([status] * times)

    def _take_fault(self) -> int | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    # --- endpoints ---------------------------------------------------------------------------

    def crypto_bars(self, q: dict) -> tuple[int, dict]:
        if q.get("timeframe") != "1Hour":
            return 422, {"code": 42210000, "message": f"unsupported timeframe {q.get('timeframe')}"}
        symbols = q["symbols"].split(",")
        start = pd.Timestamp(q["start"]) if "start" in q else pd.Timestamp.min.tz_localize("UTC")
        end = pd.Timestamp(q["end"]) if "end" in q else pd.Timestamp.max.tz_localize("UTC")
        limit = min(int(q.get("limit") or 1000), self.page_size_cap)
        rows = []
        for s in sorted(symbols):
            df = self.bars.get(s)
            if df is None:
                continue
            sel = df[(df.index >= start) & (df.index <= end)]  # Alpaca's end is inclusive
            rows += [(s, t, r) for t, r in zip(sel.index, sel.itertuples(index=False))]
        offset = int(q.get("page_token") or 0)
        page = rows[offset:offset + limit]
        out: dict[str, list] = {}
        for s, t, r in page:
            out.setdefault(s, []).append({
                "t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": r.open, "h": r.high, "l": r.low,
                "c": r.close, "v": r.volume, "n": 1, "vw": (r.high + r.low + r.close) / 3})
        token = str(offset + limit) if offset + limit < len(rows) else None
        return 200, {"bars": out, "next_page_token": token}

    def route(self, method: str, path: str, query: dict) -> tuple[int, dict]:
        self.requests.append((method, path, query))
        fault = self._take_fault()
        if fault is not None:
            return fault, {"code": fault * 100000, "message": f"emulated HTTP {fault}"}
        if method == "GET" and path == "/v1beta3/crypto/us/bars":
            return self.crypto_bars(query)
        return 404, {"code": 40400000, "message": f"no route {method} {path}"}


class _Handler(BaseHTTPRequestHandler):
    emulator: AlpacaEmulator

    def do_GET(self):  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        status, body = self.server.emulator.route("GET", url.path, query)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass


class RunningEmulator:
    """Serves an AlpacaEmulator on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, emulator: AlpacaEmulator):
        self.emulator = emulator
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.emulator = emulator
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "RunningEmulator":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
