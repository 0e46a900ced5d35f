"""A local HTTP emulator of the Alpaca endpoints that alpaca-py calls, for tests.

The real alpaca-py clients are pointed at it with `url_override`. Shapes follow Alpaca's APIs:
market data v1beta3 (`GET /v1beta3/crypto/us/bars`: `{"bars": {symbol: [{t,o,h,l,c,v,n,vw}]},
"next_page_token": ...}`, paginated across symbols in symbol, time order; `GET
/v1beta3/crypto/us/latest/trades`) and trading v2 (account, positions, assets, orders, orders
by client order id, cancel). Market orders fill at once at `prices[symbol]`; crypto positions
are reported as `BTCUSD`, orders as submitted (`BTC/USD`), as Alpaca does.

Faults are switchable per test: `fail_next(429, times=1)` answers the next request(s) with
that status; `delay_next_order_response(s)` accepts and fills the next order but answers only
after `s` seconds (a client timeout after acceptance); `partial_next_order(fraction)` fills
only part of the next order until it is looked up again; `reject_next_order(status, message)`.
Every request is logged in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd


@dataclass
class AlpacaEmulator:
    bars: dict[str, pd.DataFrame] = field(default_factory=dict)  # symbol -> OHLCV by open time
    page_size_cap: int = 10_000
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    prices: dict[str, float] = field(default_factory=dict)  # symbol like BTC/USD -> price
    cash: float = 100_000.0
    positions: dict[str, dict] = field(default_factory=dict)  # BTCUSD -> {qty, avg}
    orders: dict[str, dict] = field(default_factory=dict)  # id -> order json
    min_order_size: float = 1e-6
    min_trade_increment: str = "0.000000001"  # a string, as Alpaca sends it
    _faults: list[int] = field(default_factory=list)
    _order_delay_s: float = 0.0
    _partial: float | None = None
    _reject: tuple[int, str] | None = None
    _pending_completion: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def delay_next_order_response(self, seconds: float) -> None:
        self._order_delay_s = seconds

    def partial_next_order(self, fraction: float) -> None:
        self._partial = fraction

    def reject_next_order(self, status: int, message: str) -> None:
        self._reject = (status, message)

    def posted_orders(self) -> list[dict]:
        return [q for m, p, q in self.requests if m == "POST" and p == "/v2/orders"]

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

    def latest_trades(self, q: dict) -> tuple[int, dict]:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return 200, {"trades": {s: {"t": now, "p": self.prices[s], "s": 0.1, "i": 1,
                                    "tks": "B"} for s in q["symbols"].split(",")
                                if s in self.prices}}

    # --- trading ---------------------------------------------------------------------------

    def account(self) -> dict:
        value = sum(p["qty"] * self.prices[self._slashed(s)] for s, p in self.positions.items())
        return {"id": str(uuid.UUID(int=1)), "account_number": "PA000EMU", "status": "ACTIVE",
                "currency": "USD", "cash": str(self.cash), "equity": str(self.cash + value),
                "buying_power": str(self.cash), "portfolio_value": str(self.cash + value)}

    def _slashed(self, plain: str) -> str:
        return next(s for s in self.prices if s.replace("/", "") == plain)

    def position_json(self, plain: str, p: dict) -> dict:
        price = self.prices[self._slashed(plain)]
        return {"asset_id": str(uuid.UUID(int=2)), "symbol": plain, "exchange": "CRYPTO",
                "asset_class": "crypto", "avg_entry_price": str(p["avg"]), "qty": str(p["qty"]),
                "qty_available": str(p["qty"]), "side": "long",
                "cost_basis": str(p["qty"] * p["avg"]), "market_value": str(p["qty"] * price),
                "current_price": str(price)}

    def asset(self, symbol: str) -> dict:
        # The trading pair object of https://alpaca.markets/docs/crypto-trading ("Supported
        # Coins"): sizes and increments are decimal strings.
        return {"id": str(uuid.UUID(int=3)), "class": "crypto", "asset_class": "crypto",
                "exchange": "CRYPTO", "symbol": symbol, "name": f"{symbol} pair",
                "status": "active", "tradable": True, "marginable": False, "shortable": False,
                "easy_to_borrow": False, "fractionable": True,
                "min_order_size": str(self.min_order_size),
                "min_trade_increment": self.min_trade_increment, "price_increment": "1"}

    def assets(self, q: dict) -> tuple[int, list]:
        """`GET /v2/assets?asset_class=crypto`: every pair, slash symbols (same document)."""
        if q.get("asset_class") not in (None, "crypto"):
            return 200, []
        return 200, [self.asset(s) for s in sorted(self.prices)]

    def _fill(self, order: dict, qty: float) -> None:
        symbol, price = order["symbol"], self.prices[order["symbol"]]
        plain = symbol.replace("/", "")
        held = self.positions.get(plain, {"qty": 0.0, "avg": 0.0})
        if order["side"] == "buy":
            total = held["qty"] + qty
            self.positions[plain] = {"qty": total,
                                     "avg": (held["qty"] * held["avg"] + qty * price) / total}
            self.cash -= qty * price
        else:
            left = held["qty"] - qty
            self.cash += qty * price
            if left <= 1e-12:
                self.positions.pop(plain, None)
            else:
                self.positions[plain] = {"qty": left, "avg": held["avg"]}
        done = float(order["filled_qty"]) + qty
        order["filled_qty"] = str(done)
        order["filled_avg_price"] = str(price)
        order["status"] = "filled" if done >= float(order["qty"]) - 1e-12 else "partially_filled"

    def submit(self, body: dict) -> tuple[int, dict]:
        if any(o["client_order_id"] == body.get("client_order_id") for o in self.orders.values()):
            return 422, {"code": 40010001, "message": "client_order_id must be unique"}
        if self._reject:
            status, message = self._reject
            self._reject = None
            return status, {"code": status * 100000, "message": message}
        symbol, qty, side = body["symbol"], float(body["qty"]), body["side"]
        price = self.prices[symbol]
        if qty < self.min_order_size:
            return 422, {"code": 40010001,
                         "message": f"qty must be >= {self.min_order_size}"}
        # Stricter than a float check: Alpaca refuses a quantity that is not a whole number of
        # the pair's min_trade_increment (too many decimals), e.g. float noise like
        # 0.8317411010000001 (issue 11's probe; crypto-trading doc: min_trade_increment).
        if not _whole_steps(str(body["qty"]), self.min_trade_increment):
            return 422, {"code": 40010001, "message": f"qty must be in increments of "
                                                      f"{self.min_trade_increment}"}
        if side == "buy" and qty * price > self.cash:
            return 403, {"code": 40310000, "message": "insufficient balance for USD"}
        held = self.positions.get(symbol.replace("/", ""), {"qty": 0.0})["qty"]
        if side == "sell" and qty > held + 1e-12:
            return 403, {"code": 40310000, "message": f"insufficient balance for {symbol}"}
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        order = {"id": str(uuid.uuid4()), "client_order_id": body["client_order_id"],
                 "created_at": now, "updated_at": now, "submitted_at": now, "filled_at": None,
                 "asset_id": str(uuid.UUID(int=3)), "symbol": symbol, "asset_class": "crypto",
                 "qty": str(qty), "filled_qty": "0", "filled_avg_price": None,
                 "order_class": "simple", "order_type": "market", "type": "market",
                 "side": side, "time_in_force": body.get("time_in_force", "gtc"),
                 "status": "new", "extended_hours": False}
        self.orders[order["id"]] = order
        if self._partial is not None:
            self._fill(order, qty * self._partial)
            self._pending_completion[order["id"]] = qty * (1 - self._partial)
            self._partial = None
        else:
            self._fill(order, qty)
        return 200, dict(order)

    def by_client_id(self, client_id: str) -> tuple[int, dict]:
        for oid, o in self.orders.items():
            if o["client_order_id"] == client_id:
                rest = self._pending_completion.pop(oid, None)
                if rest:
                    self._fill(o, rest)  # a partial fill completes later
                return 200, dict(o)
        return 404, {"code": 40410000, "message": "order not found"}

    def route(self, method: str, path: str, query: dict, body: dict | None = None):
        self.requests.append((method, path, body if body is not None else query))
        fault = self._take_fault()
        if fault is not None:
            return fault, {"code": fault * 100000, "message": f"emulated HTTP {fault}"}
        with self._lock:
            if method == "GET" and path == "/v1beta3/crypto/us/bars":
                return self.crypto_bars(query)
            if method == "GET" and path == "/v1beta3/crypto/us/latest/trades":
                return self.latest_trades(query)
            if method == "GET" and path == "/v2/account":
                return 200, self.account()
            if method == "GET" and path == "/v2/positions":
                return 200, [self.position_json(s, p) for s, p in self.positions.items()]
            if method == "GET" and path == "/v2/assets":
                return self.assets(query)
            if method == "GET" and path.startswith("/v2/assets/"):
                name = path.removeprefix("/v2/assets/")
                if "/" in name:  # BTC/USD in a path is two segments: not found (alpaca-py #537)
                    return 404, {"code": 40410000, "message": "asset not found"}
                return 200, self.asset(name)
            if method == "POST" and path == "/v2/orders":
                return self.submit(body or {})
            if method == "GET" and path == "/v2/orders:by_client_order_id":
                return self.by_client_id(query["client_order_id"])
            if method == "GET" and path == "/v2/orders":
                return 200, [dict(o) for o in self.orders.values()
                             if o["status"] in ("new", "partially_filled")]
            if method == "DELETE" and path.startswith("/v2/orders/"):
                o = self.orders.get(path.removeprefix("/v2/orders/"))
                if o is None:
                    return 404, {"code": 40410000, "message": "order not found"}
                self._pending_completion.pop(o["id"], None)
                o["status"] = "canceled"
                return 204, {}
        return 404, {"code": 40400000, "message": f"no route {method} {path}"}


class _Handler(BaseHTTPRequestHandler):
    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = None
        if method == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
        emulator = self.server.emulator
        delay = 0.0
        if method == "POST" and url.path == "/v2/orders" and emulator._order_delay_s:
            delay, emulator._order_delay_s = emulator._order_delay_s, 0.0
        status, payload = emulator.route(method, url.path, query, body)
        if delay:
            time.sleep(delay)  # accepted and filled, but the answer comes too late
        data = b"" if status == 204 else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

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


def _whole_steps(qty: str, step: str) -> bool:
    from decimal import Decimal
    return (Decimal(qty) / Decimal(step)) % 1 == 0
