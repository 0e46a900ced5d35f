"""A local HTTP emulator of the Alpaca endpoints that alpaca-py calls, for tests.

The real alpaca-py clients are pointed at it with `url_override`. Shapes follow Alpaca's APIs:
market data v1beta3 (`GET /v1beta3/crypto/us/bars`: `{"bars": {symbol: [{t,o,h,l,c,v,n,vw}]},
"next_page_token": ...}`, paginated across symbols in symbol, time order; `GET
/v1beta3/crypto/us/latest/trades`) and trading v2 (account, positions, assets, orders, orders
by client order id, cancel). Crypto positions are reported as `BTCUSD`, orders as submitted
(`BTC/USD`), as Alpaca does. Where the real API's behaviour matters, the emulator does it, and
says where that is documented:

- Orders are asynchronous (https://docs.alpaca.markets/docs/orders-at-alpaca, "Order
  Lifecycle": an order is `new`/`accepted`/`pending_new` until it fills): the POST answers
  `pending_new` with nothing filled; the order is `new` at its first lookup and fills at its
  second (`fill_at_lookup`).
- A crypto buy's fee is taken from the asset received; a sell's from the USD proceeds
  (alpaca-py issue #374: buying 0.1 BTC leaves a position of 0.09975; alpaca-java issue #148:
  the order keeps saying `filled_qty` 0.5 while the position holds less, and selling 0.5 is
  refused). Positions keep 9 decimals. Each fill's fee is booked at the end of its day as a
  `CFEE` account activity (https://alpaca.markets/docs/crypto/activities/: "Fees are
  currently calculated and posted end of day"; `post_fees`, `new_day`), and with
  `fees_posted_later` the account pays it only then.
- Quantities must be whole numbers of the pair's `min_trade_increment` and at least its
  `min_order_size` (422 otherwise; https://docs.alpaca.markets/docs/crypto-trading, "Supported
  Coins").
- `/v2/assets/BTC/USD` is two path segments: 404 (alpaca-py issue #537); the asset list
  (`GET /v2/assets?asset_class=crypto`) has every pair.
- 200 requests per minute per API (https://alpaca.markets/support/usage-limit-api-calls/);
  every answer carries `X-Ratelimit-Limit`, `-Remaining` and `-Reset` (epoch seconds), and a
  request past the limit is answered 429 (https://forum.alpaca.markets/t/executing-orders/12029).
- No bar for an interval without trades (alpaca-py issue #246): a quiet symbol simply has no
  row; `add_bar` plays a late print.
- `filled_avg_price` is the average over every fill of the order, weighted by quantity (the
  order object of https://docs.alpaca.markets/reference/getorderbyclientorderid: "Filled
  average price"); the account carries `non_marginable_buying_power`, what crypto is bought
  with ("Crypto Spot Trading": crypto cannot be bought on margin).
- A cancel is asynchronous: DELETE answers 204 and the order is `pending_cancel` ("The order
  is waiting to be canceled", Order Lifecycle) until its next lookup finds it `canceled`; an
  order that is no longer open is answered 422 "order is not cancelable"
  (https://docs.alpaca.markets/reference/deleteorderbyorderid).

Faults are switchable per test: `fail_next(429, times=1, retry_after=None)` answers the next
request(s) with that status; `delay_next_order_response(s)` accepts the next order but answers
only after `s` seconds (a client timeout after acceptance); `partial_next_order(fraction)` fills
only part of the next order until it is looked up again; `end_next_order(status, fraction)`
fills that fraction and leaves the order in `status` (terminal or not); `reject_next_order(status,
message)`; `execute_next_order_but_answer(status, message)` takes the next order (it fills as
usual) yet answers it with an error, as Alpaca's paper API has done (alpacahq/Alpaca-API#270:
"POST /v2/orders ... throws an error even though the order goes through");
`fill_before_next_cancel()` lets an order fill between a client's status read and its DELETE.
Every request is logged in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd


@dataclass
class AlpacaEmulator:
    bars: dict[str, pd.DataFrame] = field(default_factory=dict)  # symbol -> OHLCV by open time
    page_size_cap: int = 10_000
    requests: list[tuple[str, str, dict]] = field(default_factory=list)
    prices: dict[str, float] = field(default_factory=dict)  # symbol like BTC/USD -> price
    timeframe: str = "1Hour"  # the bars' timeframe; other timeframes are refused
    cash: float = 100_000.0
    positions: dict[str, dict] = field(default_factory=dict)  # BTCUSD -> {qty: Decimal, avg}
    orders: dict[str, dict] = field(default_factory=dict)  # id -> order json
    min_order_size: float = 1e-6
    min_trade_increment: str = "0.000000001"  # a string, as Alpaca sends it
    fee_rate: float = 0.0025  # Alpaca's crypto taker fee (lowest volume tier)
    min_order_value: float = 1.0  # USD
    # "Fees are currently calculated and posted end of day" as CFEE account activities
    # (https://alpaca.markets/docs/crypto/activities/): every fill's fee is booked by
    # `post_fees()` (the end of the day), one activity per fill. With `fees_posted_later` the
    # account pays it then too (a fill moves the account by the trade alone); without it,
    # the account pays at the fill and the booking only records it.
    fees_posted_later: bool = True  # on: the stricter case (most tests); off where asked
    pending_fees: list[dict] = field(default_factory=list)  # fills whose fee is not booked
    activities: list[dict] = field(default_factory=list)    # CFEE activities, as posted
    today: str = field(default_factory=lambda: time.strftime("%Y-%m-%d", time.gmtime()))
    fill_at_lookup: int = 2   # an order fills when it is looked up this many times
    rate_limit: int = 200     # requests per window, per API (trading, market data)
    rate_window_s: float = 60.0
    _faults: list[tuple[int, float | None]] = field(default_factory=list)
    _order_delay_s: float = 0.0
    _partial: float | None = None
    _end: tuple[str, float] | None = None
    _reject: tuple[int, str] | None = None
    _executed_error: tuple[int, str] | None = None
    _fill_before_cancel: bool = False
    _plans: dict[str, dict] = field(default_factory=dict)  # order id -> how it will fill
    _calls: dict[str, list[float]] = field(default_factory=dict)  # API -> request times
    throttled: int = 0  # requests answered 429 for the rate limit
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def delay_next_order_response(self, seconds: float) -> None:
        self._order_delay_s = seconds

    def partial_next_order(self, fraction: float) -> None:
        self._partial = fraction

    def end_next_order(self, status: str, fraction: float = 0.0) -> None:
        self._end = (status, fraction)

    def add_bar(self, symbol: str, t: pd.Timestamp, row: dict) -> None:
        """A late print: a bar that was not there when first asked for."""
        df = self.bars[symbol]
        self.bars[symbol] = pd.concat([df, pd.DataFrame([row], index=[t])]).sort_index()

    def reject_next_order(self, status: int, message: str) -> None:
        self._reject = (status, message)

    def execute_next_order_but_answer(self, status: int, message: str) -> None:
        self._executed_error = (status, message)

    def fill_before_next_cancel(self) -> None:
        self._fill_before_cancel = True

    def posted_orders(self) -> list[dict]:
        return [q for m, p, q in self.requests if m == "POST" and p == "/v2/orders"]

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        with self._lock:
            self._faults.extend([(status, retry_after)] * times)

    def _take_fault(self) -> tuple[int, float | None] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def rate(self, path: str) -> tuple[bool, dict]:
        """Count a request against its API's limit: (within the limit, the rate headers)."""
        api = "data" if path.startswith("/v1beta3") else "trading"
        now = time.time()
        with self._lock:
            calls = [t for t in self._calls.get(api, []) if t > now - self.rate_window_s]
            ok = len(calls) < self.rate_limit
            if ok:
                calls.append(now)
            self._calls[api] = calls
            reset = (calls[0] if calls else now) + self.rate_window_s
        return ok, {"X-Ratelimit-Limit": str(self.rate_limit),
                    "X-Ratelimit-Remaining": str(max(self.rate_limit - len(calls), 0)),
                    "X-Ratelimit-Reset": str(int(reset + 0.999))}

    # --- endpoints ---------------------------------------------------------------------------

    def crypto_bars(self, q: dict) -> tuple[int, dict]:
        if q.get("timeframe") != self.timeframe:
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
        value = sum(float(p["qty"]) * self.prices[self._slashed(s)]
                    for s, p in self.positions.items())
        return {"id": str(uuid.UUID(int=1)), "account_number": "PA000EMU", "status": "ACTIVE",
                "currency": "USD", "cash": str(self.cash), "equity": str(self.cash + value),
                # a margin account's buying power is a multiple of its equity; crypto uses
                # the non-marginable one, which is the cash
                "buying_power": str(2 * (self.cash + value)),
                "non_marginable_buying_power": str(self.cash),
                "portfolio_value": str(self.cash + value)}

    def _slashed(self, plain: str) -> str:
        return next(s for s in self.prices if s.replace("/", "") == plain)

    def position_json(self, plain: str, p: dict) -> dict:
        price = self.prices[self._slashed(plain)]
        return {"asset_id": str(uuid.UUID(int=2)), "symbol": plain, "exchange": "CRYPTO",
                "asset_class": "crypto", "avg_entry_price": str(p["avg"]), "qty": str(p["qty"]),
                "qty_available": str(p["qty"]), "side": "long",
                "cost_basis": str(float(p["qty"]) * p["avg"]),
                "market_value": str(float(p["qty"]) * price),
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

    def _fill(self, order: dict, qty: Decimal) -> None:
        """Fill `qty` of the order at the current price. A buy's fee is taken from the asset
        received (to 9 decimals), a sell's from the USD proceeds."""
        symbol, price = order["symbol"], self.prices[order["symbol"]]
        plain = symbol.replace("/", "")
        held = self.positions.get(plain, {"qty": Decimal(0), "avg": 0.0})
        if order["side"] == "buy":
            fee = (qty * Decimal(repr(self.fee_rate))).quantize(Decimal("1e-9"), ROUND_HALF_EVEN)
            self.pending_fees.append({"side": "buy", "plain": plain, "qty": fee, "usd": 0.0,
                                      "price": price, "date": self.today})
            if self.fees_posted_later:  # taken from the asset when posted
                fee = Decimal(0)
            received = qty - fee
            total = held["qty"] + received
            self.positions[plain] = {
                "qty": total,
                "avg": (float(held["qty"]) * held["avg"] + float(received) * price) / float(total)}
            self.cash -= float(qty) * price
        else:
            left = held["qty"] - qty
            fee_usd = float(qty) * price * self.fee_rate
            self.pending_fees.append({"side": "sell", "plain": plain, "qty": Decimal(0),
                                      "usd": fee_usd, "price": price, "date": self.today})
            if self.fees_posted_later:  # taken from the cash when posted
                fee_usd = 0.0
            self.cash += float(qty) * price - fee_usd
            if left <= 0:
                self.positions.pop(plain, None)
            else:
                self.positions[plain] = {"qty": left, "avg": held["avg"]}
        before = Decimal(order["filled_qty"])
        done = before + qty
        order["filled_qty"] = str(done)  # the order's own quantity: the fee is not on it
        avg = float(order["filled_avg_price"] or 0.0)  # over every fill, quantity-weighted
        order["filled_avg_price"] = str((float(before) * avg + float(qty) * price) / float(done))
        order["status"] = "filled" if done >= Decimal(order["qty"]) else "partially_filled"
        order["filled_at"] = order["updated_at"] = _now()

    def submit(self, body: dict) -> tuple[int, dict]:
        if any(o["client_order_id"] == body.get("client_order_id") for o in self.orders.values()):
            return 422, {"code": 40010001, "message": "client_order_id must be unique"}
        if self._reject:
            status, message = self._reject
            self._reject = None
            return status, {"code": status * 100000, "message": message}
        symbol, qty, side = body["symbol"], Decimal(str(body["qty"])), body["side"]
        price = self.prices[symbol]
        if qty < Decimal(repr(self.min_order_size)):
            return 422, {"code": 40010001,
                         "message": f"qty must be >= {self.min_order_size}"}
        # Alpaca refuses a quantity that is not a whole number of the pair's
        # min_trade_increment (too many decimals), e.g. float noise like 0.8317411010000001.
        if (qty / Decimal(self.min_trade_increment)) % 1 != 0:
            return 422, {"code": 40010001, "message": f"qty must be in increments of "
                                                      f"{self.min_trade_increment}"}
        # Alpaca's minimum order value, observed on the paper API as 403 "cost basis must be >=
        # minimal amount of order 1"; applied to sells as well (stricter where unsure)
        if float(qty) * price < self.min_order_value:
            return 403, {"code": 40310000, "message": "cost basis must be >= minimal amount of "
                                                      f"order {self.min_order_value:g}"}
        if side == "buy" and float(qty) * price > self.cash:
            return 403, {"code": 40310000, "message": "insufficient balance for USD"}
        held = self.positions.get(symbol.replace("/", ""), {"qty": Decimal(0)})["qty"]
        if side == "sell" and qty > held:
            return 403, {"code": 40310000, "message": f"insufficient balance for {symbol} "
                                                      f"(requested: {qty}, available: {held})"}
        now = _now()
        order = {"id": str(uuid.uuid4()), "client_order_id": body["client_order_id"],
                 "created_at": now, "updated_at": now, "submitted_at": now, "filled_at": None,
                 "asset_id": str(uuid.UUID(int=3)), "symbol": symbol, "asset_class": "crypto",
                 "qty": str(qty), "filled_qty": "0", "filled_avg_price": None,
                 "order_class": "simple", "order_type": "market", "type": "market",
                 "side": side, "time_in_force": body.get("time_in_force", "gtc"),
                 "status": "pending_new", "extended_hours": False}
        self.orders[order["id"]] = order
        self._plans[order["id"]] = {"lookups": 0, "partial": self._partial, "end": self._end}
        self._partial = self._end = None
        if self._executed_error:  # taken and filling, yet answered with an error (#270)
            status, message = self._executed_error
            self._executed_error = None
            return status, {"code": status * 100000, "message": message}
        return 200, dict(order)

    def _advance(self, order: dict) -> None:
        """An order moves on when it is looked up: `new` first, then it fills (or partly, or
        ends in the status a test asked for)."""
        if order["status"] == "pending_cancel":
            order["status"] = "canceled"
            order["canceled_at"] = order["updated_at"] = _now()
            return
        plan = self._plans.get(order["id"])
        if plan is None or order["status"] in ("filled", "canceled", "expired", "rejected",
                                               "replaced"):
            return
        plan["lookups"] += 1
        if plan["lookups"] < self.fill_at_lookup:
            order["status"] = "new"
            return
        qty, filled = Decimal(order["qty"]), Decimal(order["filled_qty"])
        if plan["end"] is not None:
            status, fraction = plan["end"]
            part = (qty * Decimal(repr(fraction))).quantize(Decimal(self.min_trade_increment))
            if part > filled:
                self._fill(order, part - filled)
            order["status"] = status
            self._plans.pop(order["id"])  # stays in that status until canceled
        elif plan["partial"] is not None and filled == 0:
            self._fill(order, (qty * Decimal(repr(plan["partial"]))).quantize(
                Decimal(self.min_trade_increment)))
        else:
            self._fill(order, qty - filled)
            self._plans.pop(order["id"])

    def by_client_id(self, client_id: str) -> tuple[int, dict]:
        for o in self.orders.values():
            if o["client_order_id"] == client_id:
                self._advance(o)
                return 200, dict(o)
        return 404, {"code": 40410000, "message": "order not found"}

    def post_fees(self) -> None:
        """The end of the day: every fill's fee is booked as a CFEE activity (the shape of
        Alpaca's example: qty negative for a fee in the asset, net_amount "0" then, and
        negative USD for a fee in dollars) and, with `fees_posted_later`, taken: a buy's from
        the asset; what the position no longer holds (sold since) is taken in USD at the fill
        price, and a sell's from the cash. Stricter than assuming the fee is forgiven."""
        with self._lock:
            for f in self.pending_fees:
                qty, usd = f["qty"], f["usd"]
                if self.fees_posted_later and f["side"] == "buy":
                    held = self.positions.get(f["plain"], {"qty": Decimal(0)})["qty"]
                    qty = min(qty, held)
                    usd = float(f["qty"] - qty) * f["price"]
                    if qty:
                        self.positions[f["plain"]]["qty"] -= qty
                        if self.positions[f["plain"]]["qty"] <= 0:
                            self.positions.pop(f["plain"])
                if self.fees_posted_later:
                    self.cash -= usd
                kind = "Non USD" if f["side"] == "buy" else "USD"
                self.activities.append({
                    "id": f"{f['date'].replace('-', '')}000000000::{uuid.uuid4()}",
                    "activity_type": "CFEE", "date": f["date"], "net_amount": str(-usd),
                    "description": f"Coin Pair Transaction Fee ({kind})",
                    "symbol": f["plain"], "qty": str(-qty), "price": str(f["price"]),
                    "status": "executed"})
            self.pending_fees.clear()

    def new_day(self, day: str) -> None:
        """The clock reaches `day` (YYYY-MM-DD): the day before is over, its fees posted."""
        if day != self.today:
            self.post_fees()
            self.today = day

    def fee_activities(self, q: dict) -> tuple[int, list]:
        """`GET /v2/account/activities/CFEE` (https://docs.alpaca.markets/reference/
        getaccountactivitiesbyactivitytype): `after`/`until` dates (exclusive), `direction`
        (desc by default), `page_size` (at most 100), `page_token` (the last id seen)."""
        size = int(q.get("page_size") or 100)
        if not 1 <= size <= 100:
            return 422, {"code": 42210000, "message": "page_size must be between 1 and 100"}
        rows = [a for a in self.activities
                if ("after" not in q or a["date"] > q["after"])
                and ("until" not in q or a["date"] < q["until"])]
        rows.sort(key=lambda a: a["id"], reverse=q.get("direction", "desc") == "desc")
        if q.get("page_token"):
            ids = [a["id"] for a in rows]
            rows = rows[ids.index(q["page_token"]) + 1:] if q["page_token"] in ids else []
        return 200, rows[:size]

    def settle(self) -> None:
        """Let every open order run to its end (the market moves on without lookups)."""
        for o in list(self.orders.values()):
            while o["id"] in self._plans or o["status"] == "pending_cancel":
                self._advance(o)

    def route(self, method: str, path: str, query: dict, body: dict | None = None):
        self.requests.append((method, path, body if body is not None else query))
        fault = self._take_fault()
        if fault is not None:
            return fault[0], {"code": fault[0] * 100000, "message": f"emulated HTTP {fault[0]}"}
        with self._lock:
            if method == "GET" and path == "/v1beta3/crypto/us/bars":
                return self.crypto_bars(query)
            if method == "GET" and path == "/v1beta3/crypto/us/latest/trades":
                return self.latest_trades(query)
            if method == "GET" and path == "/v2/account":
                return 200, self.account()
            if method == "GET" and path == "/v2/positions":
                return 200, [self.position_json(s, p) for s, p in self.positions.items()]
            if method == "GET" and path == "/v2/account/activities/CFEE":
                return self.fee_activities(query)
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
                return 200, [dict(o) for o in self.orders.values() if o["status"] not in
                             ("filled", "canceled", "expired", "rejected", "replaced")]
            if method == "DELETE" and path.startswith("/v2/orders/"):
                o = self.orders.get(path.removeprefix("/v2/orders/"))
                if o is None:
                    return 404, {"code": 40410000, "message": "order not found"}
                if self._fill_before_cancel:  # the market got there first
                    self._fill_before_cancel = False
                    self._plans.pop(o["id"], None)
                    self._fill(o, Decimal(o["qty"]) - Decimal(o["filled_qty"]))
                if o["status"] in ("filled", "canceled", "expired", "rejected", "replaced",
                                   "pending_cancel"):
                    return 422, {"code": 42210000, "message": "order is not cancelable"}
                self._plans.pop(o["id"], None)
                o["status"] = "pending_cancel"  # canceled at its next lookup
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
        within, headers = emulator.rate(url.path)
        fault = emulator._faults[0] if emulator._faults else None
        if not within:
            emulator.throttled += 1
            emulator.requests.append((method, url.path, body if body is not None else query))
            status, payload = 429, {"code": 42910000, "message": "rate limit exceeded"}
        else:
            status, payload = emulator.route(method, url.path, query, body)
        if fault is not None and fault[1] is not None and status == fault[0]:
            headers["Retry-After"] = str(fault[1])
        if delay:
            time.sleep(delay)  # accepted, but the answer comes too late
        data = b"" if status == 204 else json.dumps(payload).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
