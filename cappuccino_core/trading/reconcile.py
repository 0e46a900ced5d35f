"""Live vs replay: why did the trader's account differ from what the backtest says?

`reconcile(cfg, engine, trader, start, end)` takes the trader's recorded decisions (each bar's
target weights, the prices its plan used, and the account and stops before its orders) and
replays the same decisions through the backtest environment's arithmetic (`env.rebalance` at
the next bar's open, `env.apply_stops` over each bar to the next decision), starting from the
account the trader really had at the first decision. Both sides trade the same targets, so
what differs is execution, and every dollar of difference is put on a cause:

- **fill price**: the same quantity bought or sold at another price (a rebalance fill);
- **fee**: fees charged differ from the modelled rate (the broker's booked fee, once booked);
- **fee posting**: a fee the broker took after the fill (Alpaca posts crypto fees at the end
  of the day): the account is ahead by it from the fill until the decision that saw its
  booking, then pays it (what the units not yet taken earned meanwhile is here too);
- **skipped order**: the replay trades a quantity the trader did not (below the asset's
  minimum, rejected, never sent), and what that position then earned or lost;
- **stop**: a stop exit that differs (one side only, or at another price or size);
- **quiet bar**: a quantity difference on an asset that printed no bar that hour;
- **fill quantity**: other quantity differences (rounding to the increment, partial fills);
- **unexplained**: what is left. The live side's equity is the broker's account at each
  decision, while every cause is computed from the journal's fills, so a fill missing from the
  journal (or a position changed behind the trader's back) lands here.

The account identity behind it: between decision k and k+1, equity valued at each decision's
prices changes by the trades (cash flow + units received, valued at P[k+1]) plus the units held
times the price move P[k+1] - P[k]; live minus replay, term by term, per asset.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..common.errors import CappuccinoError
from ..data import load_bars
from ..rl.env import EnvSettings, apply_stops, next_cooldown, rebalance, update_entry
from .journal import Journal

CAUSES = ("fill price", "fee", "fee posting", "skipped order", "stop", "quiet bar",
          "fill quantity")
NOT_TRADED = ("skipped", "rejected", "not_sent", "canceled", "expired")


@dataclass
class Trade:
    qty: float          # units bought or sold (the order's quantity)
    price: float
    fee: float          # USD; a buy's: the units taken, valued at the fill price
    fee_qty: float = 0.0
    deferred: bool = False  # the account paid it after the fill

    def fee_at(self, price: float) -> float:
        """The fee valued at `price`: the units taken from the asset at that price, plus
        what was taken in USD."""
        return self.fee_qty * price + self.fee - self.fee_qty * self.price


@dataclass
class Side:
    """One side's trades in an interval, per (symbol, purpose, side)."""
    trades: dict[tuple[str, str, str], list[Trade]] = field(
        default_factory=lambda: defaultdict(list))

    def add(self, symbol: str, purpose: str, side: str, trade: Trade) -> None:
        self.trades[(symbol, purpose, side)].append(trade)


@dataclass
class BarRow:
    bar: pd.Timestamp          # the decision: its orders, then the bars to the next one
    live_equity: float
    replay_equity: float
    causes: dict[str, float]   # this interval's difference, by cause
    unexplained: float
    fills: list[dict]          # per symbol: live and replay quantities and prices

    @property
    def difference(self) -> float:
        return self.live_equity - self.replay_equity


@dataclass
class Reconciliation:
    trader: str
    rows: list[BarRow]
    largest: list[dict]        # the largest single differences, attributed

    def totals(self) -> dict[str, float]:
        out = {c: sum(r.causes[c] for r in self.rows) for c in CAUSES}
        out["unexplained"] = sum(r.unexplained for r in self.rows)
        return out

    @property
    def difference(self) -> float:
        return self.rows[-1].difference if self.rows else 0.0


class ReconcileError(CappuccinoError):
    """The journal and the broker disagree in a way that must not be papered over."""
    label = "reconcile"


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _decisions(engine: Engine, trader: str, start, end) -> list:
    return Journal(engine, trader).decision_rows(
        None if start is None else _utc(start).to_pydatetime(),
        None if end is None else _utc(end).to_pydatetime())


def _live_trades(engine: Engine, trader: str, bar: pd.Timestamp, nxt: pd.Timestamp,
                 step: pd.Timedelta) -> tuple[Side, list]:
    """The journal's fills from the decision at `bar` to the one at `nxt`: the rebalance
    orders of `bar`, and the stop exits while the next bar was lived through. Also the
    orders it did not trade (skipped, rejected, ...), as (symbol, side, status)."""
    lived_from, lived_to = bar + step, nxt + step
    rows = Journal(engine, trader).trades_of_decision(
        bar.to_pydatetime(), lived_from.to_pydatetime(), lived_to.to_pydatetime())
    side = Side()
    not_traded = []
    for r in rows:
        if r.qty is not None:
            side.add(r.symbol, r.reason, r.side,
                     Trade(r.qty, r.price, r.fee, r.fee_qty, bool(r.fee_deferred)))
        elif r.status in NOT_TRADED:
            not_traded.append((r.symbol, r.side, r.status))
    return side, not_traded


@dataclass
class Posting:
    """A fill whose fee the account paid later: when it was filled (trader's clock), the
    decision that saw its booking (None: not yet), and its fee."""
    symbol: str
    at: pd.Timestamp
    booked_bar: pd.Timestamp | None
    trade: Trade


def _postings(engine: Engine, trader: str) -> list[Posting]:
    return [Posting(r.symbol, _utc(r.ts), None if r.booked_bar is None else _utc(r.booked_bar),
                    Trade(r.qty, r.price, r.fee, r.fee_qty, True))
            for r in Journal(engine, trader).deferred_fills()]


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=float))


@dataclass
class ReplayBook:
    """The replayed account: the backtest environment's state for one episode."""
    units: torch.Tensor     # [1, A]
    cash: torch.Tensor      # [1]
    entry: torch.Tensor
    peak: torch.Tensor
    cooldown: torch.Tensor  # decisions left before an asset may be bought again

    @classmethod
    def from_decision(cls, d, symbols: list[str], step: pd.Timedelta) -> "ReplayBook":
        """The account, stops and cooldowns the trader recorded before decision `d`."""
        bar = _utc(d.bar_time)
        return cls(_t([[d.positions.get(s, 0.0) for s in symbols]]), _t([d.cash]),
                   _t([[d.stops.get(s, {}).get("entry", 0.0) for s in symbols]]),
                   _t([[d.stops.get(s, {}).get("peak", 0.0) for s in symbols]]),
                   _t([[max((_utc(d.cooldown[s]) - bar) / step, 0.0) if s in d.cooldown
                        else 0.0 for s in symbols]]))

    def value(self, prices: np.ndarray) -> float:
        return float(self.cash[0] + self.units[0].numpy() @ prices)

    def trade(self, symbols: list[str], target: torch.Tensor, bars_ohlc,
              s: EnvSettings) -> Side:
        """One decision as the environment makes it: `target` filled at the next bar's open,
        then the bars until the next decision (`bars_ohlc`: open, high, low, close, each
        `[bars, A]`) lived through (stops, the re-entry cooldown). Returns its trades."""
        o, h, lo, c = bars_ohlc
        after, cash, _, _, fill_px = rebalance(self.units, self.cash, target, o[:1], s,
                                               no_buy=self.cooldown > 0)
        self.entry, self.peak = update_entry(self.units, after, self.entry, self.peak, fill_px)
        trades = Side()
        for a, sym in enumerate(symbols):
            delta, px = float(after[0, a] - self.units[0, a]), float(fill_px[0, a])
            if delta > 0:  # ordered units; the fee comes out of them
                q = delta / (1 - s.fee)
                trades.add(sym, "rebalance", "buy", Trade(q, px, q * s.fee * px, q * s.fee))
            elif delta < 0:
                trades.add(sym, "rebalance", "sell", Trade(-delta, px, -delta * px * s.fee))
        held = after
        for j in range(o.shape[0]):
            before = held
            held, cash, self.peak, self.entry, _, _, hit, exit_px = apply_stops(
                held, cash, self.peak, self.entry, o[j:j + 1], h[j:j + 1], lo[j:j + 1],
                c[j:j + 1], s)
            self.cooldown = next_cooldown(self.cooldown, hit, s)
            for a, sym in enumerate(symbols):
                if bool(hit[0, a]):
                    q, px = float(before[0, a]), float(exit_px[0, a])
                    trades.add(sym, "stop", "sell", Trade(q, px, q * px * s.fee))
        self.units, self.cash = held, cash
        return trades


class Attribution:
    """Puts each interval's difference on its causes, remembering per asset why the two
    sides' positions differ (what that difference earns later has the same cause)."""

    def __init__(self, symbols: list[str]):
        self.symbols = symbols
        self.cause_of: dict[str, str] = {}
        self.largest: list[dict] = []

    def interval(self, bar, decision, live: Side, not_traded: list, replay: Side,
                 live_u: np.ndarray, rep_u: np.ndarray, p_now: np.ndarray,
                 p_next: np.ndarray, next_open: np.ndarray, owed_u: np.ndarray,
                 posted: list[Posting]) -> tuple[dict, list[dict]]:
        causes = dict.fromkeys(CAUSES, 0.0)

        def put(cause: str, amount: float, symbol: str, what: str) -> None:
            causes[cause] += amount
            if abs(amount) >= 0.005:  # a cent, rounded: not float dust
                self.largest.append({"bar": bar, "symbol": symbol, "cause": cause,
                                     "amount": amount, "what": what})

        # what each asset's position difference earned while prices moved (units the broker
        # has yet to take as a fee: a fee posting's)
        for a, s in enumerate(self.symbols):
            differ = live_u[a] - owed_u[a] - rep_u[a]
            if abs(differ) * p_now[a] < 0.01:
                self.cause_of.pop(s, None)  # the two sides hold the same again
            carried = differ * (p_next[a] - p_now[a])
            if abs(carried) > 1e-9:
                put(self.cause_of.get(s, "fill quantity"), carried, s,
                    f"{differ:+.8g} units held vs the replay, price "
                    f"{p_now[a]:.6g} -> {p_next[a]:.6g}")
            owed = owed_u[a] * (p_next[a] - p_now[a])
            if abs(owed) > 1e-9:
                put("fee posting", owed, s, f"{owed_u[a]:.8g} units owed as fees, price "
                    f"{p_now[a]:.6g} -> {p_next[a]:.6g}")
        for x in posted:  # fees the account paid since the last decision
            a = self.symbols.index(x.symbol)
            put("fee posting", -x.trade.fee_at(p_next[a]), x.symbol,
                f"fee of {x.at:%Y-%m-%d %H:%M} posted")
        # the trades, valued at the next decision's prices
        fill_rows = []
        for key in sorted(set(live.trades) | set(replay.trades)):
            s, purpose, way = key
            a = self.symbols.index(s)
            mine, theirs = live.trades.get(key, []), replay.trades.get(key, [])
            ql, qr = sum(x.qty for x in mine), sum(x.qty for x in theirs)
            pl = sum(x.qty * x.price for x in mine) / ql if ql else 0.0
            pr = sum(x.qty * x.price for x in theirs) / qr if qr else 0.0
            sign = 1.0 if way == "buy" else -1.0  # a buy gains when bought for less
            matched = min(ql, qr)
            put("stop" if purpose == "stop" else "fill price", sign * matched * (pr - pl), s,
                f"{way} {matched:.8g} at {pl:.6g} live vs {pr:.6g} replayed")
            fee_live = sum(x.fee_at(p_next[a]) for x in mine)
            fee_rep = sum(x.fee_at(p_next[a]) for x in theirs)
            put("fee", fee_rep - fee_live, s, f"{way} fees {fee_live:.2f} live vs "
                f"{fee_rep:.2f} replayed")
            later = sum(x.fee_at(p_next[a]) for x in mine if x.deferred)
            put("fee posting", later, s, f"{way} fees {later:.2f} not yet taken by the broker")
            if abs(ql - qr) > 1e-12:
                # a different quantity: the journal's reason if it has one, else the
                # reason the positions already differed (the replay re-balances its own)
                why = ("stop" if purpose == "stop" else
                       "skipped order" if any(n[0] == s and n[1] == way for n in not_traded)
                       else "quiet bar" if s in (decision.quiet or [])
                       else self.cause_of.get(s, "fill quantity"))
                if abs(ql - qr) * p_next[a] > 0.01:  # a real difference, not rounding
                    self.cause_of[s] = why
                # what the unmatched quantity did, against the next decision's price
                extra = sign * ((ql - matched) * (p_next[a] - pl)
                                - (qr - matched) * (p_next[a] - pr))
                put(why, extra, s, f"{way} {ql:.8g} live vs {qr:.8g} replayed")
            fill_rows.append({"symbol": s, "purpose": purpose, "side": way,
                              "target": decision.target.get(s), "live_qty": ql,
                              "live_price": pl, "replay_qty": qr, "replay_price": pr,
                              "slippage_vs_open": pl / next_open[a] - 1 if ql else None})
        return causes, fill_rows


def reconcile(cfg: Config, engine: Engine, trader: str, start=None, end=None) -> Reconciliation:
    rows = _decisions(engine, trader, start, end)
    if len(rows) < 2:
        raise ReconcileError(f"trader {trader!r} has {len(rows)} recorded decision(s) in that "
                             "window: at least two are needed (one interval)")
    symbols = list(cfg.data.symbols)
    step = pd.Timedelta(seconds=cfg.bar_seconds)
    first, last = _utc(rows[0].bar_time), _utc(rows[-1].bar_time)
    bars = load_bars(cfg, start=first, end=last + 3 * step)
    ohlc = [bars.field(f) for f in ("open", "high", "low", "close")]
    book = ReplayBook.from_decision(rows[0], symbols, step)
    why = Attribution(symbols)
    postings = _postings(engine, trader)
    out: list[BarRow] = []
    difference = 0.0  # live minus replay, valued at the decision's prices
    for dk, dn in zip(rows, rows[1:]):
        bar, nxt = _utc(dk.bar_time), _utc(dn.bar_time)
        i, j = int(bars.index.searchsorted(bar)), int(bars.index.searchsorted(nxt))
        if j >= len(bars) or bars.index[i] != bar or bars.index[j] != nxt:
            raise ReconcileError(f"no bars for {bar} to {nxt}: fetch the data first")
        p_now = np.array([dk.prices[s] for s in symbols])
        p_next = np.array([dn.prices[s] for s in symbols])
        live_u = np.array([dk.positions.get(s, 0.0) for s in symbols])
        live_u_next = np.array([dn.positions.get(s, 0.0) for s in symbols])
        rep_u = book.units[0].numpy().copy()
        # the replay trades the recorded target with the trader's rules and no-trade band
        settings = EnvSettings.from_config(cfg, min_rebalance_weight=dk.band)
        replay = book.trade(symbols, _t([[dk.target[s] for s in symbols]]),  # to the next
                            [_t(x[i + 1:j + 1]) for x in ohlc], settings)  # decision's bar
        live, not_traded = _live_trades(engine, trader, bar, nxt, step)
        # deferred buy fees the broker still held as units at this decision (filled before its
        # account read, at bar + step, and not yet seen booked)
        owed_u = np.zeros(len(symbols))
        for x in postings:
            if x.at < bar + step and (x.booked_bar is None or x.booked_bar > bar):
                owed_u[symbols.index(x.symbol)] += x.trade.fee_qty
        posted = [x for x in postings if x.booked_bar is not None and bar < x.booked_bar <= nxt]
        causes, fill_rows = why.interval(bar, dk, live, not_traded, replay, live_u, rep_u,
                                         p_now, p_next, ohlc[0][i + 1], owed_u, posted)
        live_eq, rep_eq = float(dn.cash + live_u_next @ p_next), book.value(p_next)
        unexplained = (live_eq - rep_eq) - difference - sum(causes.values())
        difference = live_eq - rep_eq
        out.append(BarRow(bar, live_eq, rep_eq, causes, unexplained, fill_rows))
    why.largest.sort(key=lambda x: -abs(x["amount"]))
    return Reconciliation(trader, out, why.largest[:10])


def render(rec: Reconciliation, per_bar: int = 20) -> str:
    """The table: the bars with the largest differences, the totals by cause, the largest
    single differences."""
    head = (f"{'bar':<17}{'live':>13}{'replay':>13}{'difference':>12}"
            + "".join(f"{c[:10]:>11}" for c in CAUSES) + f"{'unexplained':>12}")
    lines = [f"trader {rec.trader}: live vs replay over {len(rec.rows)} bar(s) "
             f"({rec.rows[0].bar:%Y-%m-%d %H:%M} to {rec.rows[-1].bar:%Y-%m-%d %H:%M}); "
             "amounts in account currency, each bar's change", head]
    worst = sorted(rec.rows, key=lambda r: -max(abs(v) for v in
                                               [*r.causes.values(), r.unexplained]))[:per_bar]
    for r in sorted(worst, key=lambda r: r.bar):
        lines.append(f"{r.bar:%Y-%m-%d %H:%M} {r.live_equity:>13,.2f}{r.replay_equity:>13,.2f}"
                     f"{r.difference:>12,.2f}"
                     + "".join(f"{r.causes[c]:>11,.2f}" for c in CAUSES)
                     + f"{r.unexplained:>12,.2f}")
    totals = rec.totals()
    lines.append(f"{'total':<43}{rec.difference:>12,.2f}"
                 + "".join(f"{totals[c]:>11,.2f}" for c in CAUSES)
                 + f"{totals['unexplained']:>12,.2f}")
    if rec.largest:
        lines.append("largest differences:")
        for x in rec.largest:
            lines.append(f"  {x['bar']:%Y-%m-%d %H:%M} {x['symbol']:<9} {x['cause']:<14}"
                         f"{x['amount']:>+12,.2f}  {x['what']}")
    return "\n".join(lines)


def as_dict(rec: Reconciliation) -> dict:
    return {"trader": rec.trader, "difference": rec.difference, "totals": rec.totals(),
            "bars": [dataclasses.asdict(r) | {"bar": r.bar.isoformat()} for r in rec.rows],
            "largest": [x | {"bar": x["bar"].isoformat()} for x in rec.largest]}
