"""The trader: one decision every `data.decision_bars` closed bars, stop checks every bar and
between bars, all state in the database.

`Trader` is driven from outside (the live loop in trading/live.py, or a replay on a simulated
clock) and knows nothing of clocks itself; it decides, and its journal (trading/journal.py)
writes everything down:

- `start()` reconciles with the broker (its positions are the truth; differences are logged)
  and resolves orders a crash left pending, by client order id.
- `on_bar(bar_time, features, now)` trades one closed bar: never a bar twice, never one older
  than `risk.stale_bar_limit_bars`. Ensemble -> target weights (saved before any order, so a
  restart in the middle of the bar finishes the same decision) -> drawdown halt -> order plan
  with the environment's arithmetic -> sells, then the planned buys (scaled down only if the
  sells brought less cash than planned) -> stops updated -> equity snapshot -> the bar
  recorded as processed.
- `check_stops(open, high, low, close)` and `exit_positions()` apply the trailing stop and the
  stop loss with the environment's rule (`env.apply_stops`); exits sell the whole position, in
  the asset's own units, as the broker reports it, and start the asset's re-entry cooldown:
  the next `risk.reentry_cooldown_bars` bars do not buy it (the environment's rule; the
  members see how much of it is left, as they did in training).
- `reload(ensemble)` swaps the ensemble between bars.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pandas as pd
import torch
from sqlalchemy.engine import Engine

from ..broker.base import Broker, OrderState, OrderStatus
from ..common.config import Config
from ..data.bars import is_decision_bar
from ..ensemble.serving import Ensemble
from ..rl.backtest import trading_settings
from ..rl.env import apply_stops, stop_room
from .journal import Journal, StateKey, TraderState
from .orders import PlannedOrder, affordable, client_order_id, dust, plan_rebalance

log = logging.getLogger(__name__)
STOPS, LAST_BAR, EQUITY_PEAK, HALTED, DECISION, COOLDOWN, _MODE, DUST = StateKey
# A measured fee is believed between these multiples of the configured rate's.
FEE_BAND = (0.5, 2.0)
FEE_LOOKBACK = pd.Timedelta(days=7)  # fills older than this unbooked stay as recorded
# a rejection that names the asset rules (Alpaca: "qty must be in increments of ...",
# "qty must be >= ...", "cost basis must be >= minimal amount of order ...")
RULE_WORDS = re.compile(r"increment|qty must be|min(imum|imal)?[ _]", re.I)


class Trader:
    def __init__(self, cfg: Config, broker: Broker, engine: Engine, name: str = "paper",
                 ensemble: Ensemble | None = None):
        self.cfg, self.broker, self.name = cfg, broker, name
        self.journal = Journal(engine, name)
        self.symbols = list(cfg.data.symbols)
        self.ensemble = ensemble
        self.settings = trading_settings(cfg, ensemble)
        self.rules = broker.asset_rules(self.symbols)
        self.rules_refused = False  # a rejection named the asset rules: ask for them again
        self.state: TraderState = self.journal.load_state()
        self.rejected_in_bar: list[str] = []  # the last bar's orders the broker refused

    @property
    def last_bar(self) -> pd.Timestamp | None:
        v = self.state.last_bar
        return None if v is None else pd.Timestamp(v)

    # --- start-up --------------------------------------------------------------------------

    def start(self, at: pd.Timestamp | None = None) -> None:
        """Resolve orders left pending by a crash, then reconcile with the broker. A trader's
        first start records its starting equity (at `at`, default now): returns are measured
        from there, before the first fee."""
        for coid in self.journal.open_orders():
            found = self.broker.get_order(coid)
            if found is None:
                self.journal.mark_not_sent(coid)
                log.warning("order %s was never received by the broker", coid)
            else:
                self.journal.record_result(self._with_fee_estimate(
                    self.broker.wait_for_fill(found)))
                log.info("order %s resolved after restart: %s", coid, found.status.value)
        unknown = [o.client_order_id for o in self.broker.open_orders()
                   if o.client_order_id.startswith(f"cap-{self.name}-")]
        for coid in unknown:  # ours by its id, but not in the journal (a lost database?)
            log.warning("open order %s at the broker is not in the journal", coid)
        self.reconcile()
        self.journal.save_state(self.state, STOPS)
        if not self.journal.has_snapshots():
            self.snapshot(at if at is not None else pd.Timestamp.now(tz="UTC"))

    def reconcile(self) -> None:
        """The broker's positions are the truth: adopt them, log what the state disagreed on."""
        positions = self.broker.positions()
        stops = self.state.stops
        for symbol in set(stops) - set(positions):
            log.warning("reconcile: %s has no position at the broker; dropping its stop", symbol)
            stops.pop(symbol)
        for symbol, p in positions.items():
            if symbol not in self.symbols:
                log.warning("reconcile: position in %s is not a configured symbol; left alone",
                            symbol)
                continue
            if symbol not in stops:
                log.warning("reconcile: %s %.8f held at the broker with no stop state; "
                            "entry %.6g", symbol, p.qty, p.avg_entry_price)
                stops[symbol] = {"entry": p.avg_entry_price, "peak": p.avg_entry_price}

    # --- one bar ---------------------------------------------------------------------------

    def on_bar(self, bar_time: pd.Timestamp, features: np.ndarray, now: pd.Timestamp,
               close: np.ndarray | None = None, quiet: list[str] = ()) -> str:
        """Trade the closed bar that opened at `bar_time`. Returns what happened.

        As in the environment, the members see the portfolio valued at the bar's `close`
        (symbol order; default the broker's latest prices) and orders are planned at the
        broker's latest prices (the next bar's open, live or in a replay). `quiet` names the
        assets that printed no bar (flat-filled at their last close): recorded with the
        decision."""
        if self.last_bar is not None and bar_time <= self.last_bar:
            return "already processed"
        self.rejected_in_bar = []  # what the broker refused of this bar's orders
        age = now - (bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds))
        if age > pd.Timedelta(seconds=self.cfg.bar_seconds * self.cfg.risk.stale_bar_limit_bars):
            log.warning("bar %s is %s old: too stale to trade, skipped", bar_time, age)
            self._mark_processed(bar_time)
            return "stale"
        if self.ensemble is None:
            return "no ensemble"
        if not is_decision_bar(bar_time, self.cfg.bar_seconds, self.cfg.data.decision_bars):
            # the cadence: no decision at this bar (stops are checked every bar regardless)
            self.snapshot(bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds))
            self._mark_processed(bar_time)
            return "between decisions"
        self.reconcile()
        # the venue's rules as of today (the broker asks again daily, or now after a refusal)
        self.rules = self.broker.asset_rules(self.symbols, refresh=self.rules_refused)
        self.rules_refused = False
        prices = self._prices()
        self._book_fees(bar_time)  # before the account is read: the decision sees them paid
        account = self.broker.account()
        positions = self.broker.positions()
        self._note_dust(positions, prices)
        valued_at = prices if close is None else np.asarray(close, dtype=float)
        value = np.array([positions[s].qty * valued_at[i] if s in positions else 0.0
                          for i, s in enumerate(self.symbols)])
        equity = account.cash + value.sum()
        decided = self.state.decision or {}
        cooling = self._cooldown_share(bar_time)
        if decided.get("bar") == bar_time.isoformat():
            # resuming a bar a crash interrupted (None: HOLD, stored as JSON null)
            target = np.array(decided["target"], dtype=float)
        else:
            target = self.ensemble.target_weights(features, value / equity,
                                                  account.cash / equity, cooling,
                                                  self._stop_room(positions, valued_at))
            target = self._drawdown_guard(target, value / equity, equity)
            stored = [None if np.isnan(w) else float(w) for w in target]  # NaN: not JSON
            self.state.decision = {"bar": bar_time.isoformat(), "target": stored,
                                   "ensemble": self.ensemble.version}
            self.journal.save_state(self.state, DECISION, EQUITY_PEAK, HALTED)  # before orders
            self.journal.record_decision(
                bar_time, {**dict(zip(self.symbols, stored[:-1])), "cash": stored[-1]},
                dict(zip(self.symbols, prices.tolist())), list(quiet), self.ensemble.version,
                self.settings.min_rebalance_weight, account.cash,
                {s: p.qty for s, p in positions.items()}, self.state.stops, self.state.cooldown)
        # One plan, as the environment trades it: sells first, then the buys it planned on the
        # cash the sells bring (scaled down only if the fills brought less than planned).
        plan = plan_rebalance(target, self.symbols, positions, account.cash, prices,
                              self.settings, self.rules, no_buy=cooling > 0)
        sent_at = bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds)  # the bar's close
        self._execute([o for o in plan if o.side == "sell"], bar_time, sent_at)
        buys = affordable([o for o in plan if o.side == "buy"], self.broker.account().cash,
                          dict(zip(self.symbols, prices)), self.settings, self.rules)
        self._execute(buys, bar_time, sent_at)
        self._update_stops(prices)
        self.snapshot(bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds))
        self._mark_processed(bar_time)
        return "traded"

    def _book_fees(self, bar_time: pd.Timestamp) -> None:
        """Fees the broker booked since (Alpaca's CFEE, posted at the end of the day) replace
        what was recorded for the fills of the last FEE_LOOKBACK; one request a bar, none
        when every fill is booked. A broker that cannot answer now is asked at the next bar:
        trading never waits for a booking."""
        if not self.broker.books_fees_later:
            return
        since = self.journal.unbooked_since(bar_time - FEE_LOOKBACK)
        if since is None:
            return
        try:
            bookings = self.broker.fee_bookings(since)
        except Exception as e:  # noqa: BLE001 - any failure: the next bar asks again
            log.warning("fee bookings not read (%s): asked again at the next bar", e)
            return
        for line in self.journal.book_fees(bookings, bar_time):
            log.warning(line)
            self.journal.event("warning", "fee_unmatched", line)

    def _note_dust(self, positions: dict, prices: np.ndarray) -> None:
        """Positions worth less than the venue's minimum order value: left alone (an order
        for them is refused), kept in the state and shown by `trader status`, said once."""
        now = dust(positions, dict(zip(self.symbols, prices)), self.rules)
        for s in sorted(set(now) - set(self.state.dust)):
            msg = (f"{s}: {now[s]:.10g} units left, below the venue's minimum order value "
                   f"({self.rules[s].min_notional:g} USD): dust, not sold")
            log.warning(msg)
            self.journal.event("warning", "dust", msg, {"symbol": s, "qty": now[s]})
        if now != self.state.dust:
            self.state.dust = now
            self.journal.save_state(self.state, DUST)

    def _cooldown_share(self, bar_time: pd.Timestamp) -> np.ndarray:
        """Per symbol, the share of its re-entry cooldown still to wait at this decision (as
        `env.cooldown_share`); cooldowns that have run out are forgotten."""
        step = pd.Timedelta(seconds=self.cfg.bar_seconds)
        full = max(self.settings.reentry_cooldown_bars, 1)
        share = np.zeros(len(self.symbols))
        for s, until in list(self.state.cooldown.items()):
            left = (pd.Timestamp(until) - bar_time) / step
            if left <= 0:
                self.state.cooldown.pop(s)
            elif s in self.symbols:
                share[self.symbols.index(s)] = left / full
        return share

    def _stop_room(self, positions: dict, prices: np.ndarray) -> np.ndarray:
        """Per symbol, its room to its stop at `prices`, as the environment shows it to the
        members (`env.stop_room`, from the entry and peak the trader keeps)."""
        stops = self.state.stops
        t = lambda key: torch.tensor([[stops.get(s, {}).get(key, 0.0)  # noqa: E731
                                       for s in self.symbols]], dtype=torch.float64)
        units = torch.tensor([[positions[s].qty if s in positions and s in stops else 0.0
                               for s in self.symbols]], dtype=torch.float64)
        return stop_room(units, t("peak"), t("entry"), torch.as_tensor(prices)[None],
                         self.settings)[0].double().numpy()

    def _prices(self) -> np.ndarray:
        latest = self.broker.latest_prices(self.symbols)
        return np.array([latest[s] for s in self.symbols])

    def _drawdown_guard(self, target: np.ndarray, current: np.ndarray, equity: float):
        """Past `risk.max_drawdown_halt_pct` below the equity peak: no new buying."""
        peak = max(self.state.equity_peak or equity, equity)
        self.state.equity_peak = peak
        limit = self.cfg.risk.max_drawdown_halt_pct
        halted = limit is not None and equity <= peak * (1 - limit)
        if halted != self.state.halted:
            self.state.halted = halted
            msg = (f"drawdown {1 - equity / peak:.1%} from peak {peak:,.2f}: "
                   + ("new buying halted" if halted else "buying resumes"))
            log.warning(msg)
            self.journal.event("warning", "drawdown_halt", msg)
        if halted:
            assets = np.minimum(target[:-1], current)  # a held asset (NaN) stays held
            return np.concatenate([assets, [1 - np.where(np.isnan(assets), current,
                                                          assets).sum()]])
        return target

    def _mark_processed(self, bar_time: pd.Timestamp) -> None:
        """The bar is done: its stops, equity peak and the bar itself are saved together."""
        self.state.last_bar = bar_time.isoformat()
        self.journal.save_state(self.state, STOPS, EQUITY_PEAK, HALTED, LAST_BAR, COOLDOWN)

    # --- stops -----------------------------------------------------------------------------

    def check_stops(self, bar_open, high, low, close) -> list[tuple[str, float]]:
        """Stops hit by prices seen since the last check (arrays in symbol order; one live
        price goes in as all four). Updates the peaks; returns [(symbol, exit price)].
        Needs no database: the peaks live in memory and are written when it answers."""
        stops = self.state.stops
        held = [s in stops for s in self.symbols]
        if not any(held):
            return []
        t = lambda x: torch.as_tensor(np.asarray(x, dtype=float))  # noqa: E731
        units = t(held).double()
        peak = t([stops[s]["peak"] if s in stops else 0.0 for s in self.symbols])
        entry = t([stops[s]["entry"] if s in stops else 0.0 for s in self.symbols])
        _, _, new_peak, _, _, _, hit, exit_px = apply_stops(
            units, torch.zeros((), dtype=torch.float64), peak, entry, t(bar_open), t(high),
            t(low), t(close), dataclasses.replace(self.settings, slippage_bps=0.0))
        exits = []
        for a, s in enumerate(self.symbols):
            if s not in stops:
                continue
            if bool(hit[a]):
                exits.append((s, float(exit_px[a])))
            else:
                stops[s]["peak"] = float(new_peak[a])
        with self.journal.tolerant():
            self.journal.save_state(self.state, STOPS)
        return exits

    def exit_positions(self, exits: list[tuple[str, float]], when: pd.Timestamp) -> None:
        """Sell every unit of each position whose stop was hit. Needs only the broker: during
        a database outage the journal writes wait in memory, in order, and the order is still
        sent (its client order id makes a resend after a crash harmless)."""
        positions = self.broker.positions()
        small = dust(positions, dict(exits), self.rules)
        plan = [PlannedOrder(s, "sell", positions[s].qty, "stop") for s, _ in exits
                if s in positions and s not in small]
        with self.journal.tolerant():
            for s, price in exits:
                msg = f"stop exit {s} at {price:.6g} (peak {self.state.stops[s]['peak']:.6g})"
                if s in small:
                    msg += f": {small[s]:.10g} units are dust (below the venue's minimum " \
                           "order value), not sent"
                log.warning(msg)
                self.journal.event("warning", "stop_exit", msg, {"symbol": s, "price": price})
            self._execute(plan, when)
            # not bought again for the next reentry_cooldown_bars decisions, the first being
            # the bar this exit happened in; a stopped position starts afresh if it is. An
            # exit the broker refused keeps its stop (peak and entry): the next check sells.
            after = self.broker.positions()
            left = dust(after, dict(exits), self.rules)
            step = pd.Timedelta(seconds=self.cfg.bar_seconds)
            until = when.floor(step) + step * self.settings.reentry_cooldown_bars
            for s, _ in exits:
                if s in after and s not in left:
                    log.error("stop exit of %s refused: its stop is kept, the next check "
                              "sells", s)
                    continue
                self.state.stops.pop(s, None)
                if self.settings.reentry_cooldown_bars:
                    self.state.cooldown[s] = until.isoformat()
            self.state.dust = {**self.state.dust, **left}
            self._update_stops(self._prices())
            self.journal.save_state(self.state, STOPS, COOLDOWN, DUST)

    def _update_stops(self, prices: np.ndarray) -> None:
        """New positions start their stop at the entry price; closed ones, and dust (it cannot
        be sold), lose it."""
        positions = {s: p for s, p in self.broker.positions().items()
                     if s not in self.state.dust}
        stops = self.state.stops
        for a, s in enumerate(self.symbols):
            if s in positions and s not in stops:
                entry = positions[s].avg_entry_price
                stops[s] = {"entry": entry, "peak": max(entry, float(prices[a]))}
            elif s in positions:  # added to: the entry averages, the peak stays (as the env)
                stops[s]["entry"] = positions[s].avg_entry_price
            else:
                stops.pop(s, None)

    # --- orders ----------------------------------------------------------------------------

    def _execute(self, plan: list[PlannedOrder], when: pd.Timestamp,
                 at: pd.Timestamp | None = None) -> None:
        """Send the plan's orders (named after `when`), at `at` on the trader's clock
        (default `when`)."""
        at = when if at is None else at
        after = None  # the account after the last order sent: the next one's "before"
        for o in plan:
            coid = client_order_id(self.name, o.purpose, when, o.symbol, o.side)
            if o.skip:
                log.info("order %s skipped: %s", coid, o.skip)
                self.journal.record_skipped(coid, o.symbol, o.side, o.qty, o.purpose, when,
                                            o.skip)
                continue
            if not self.journal.record_new(coid, o.symbol, o.side, o.qty, o.purpose, when):
                # journaled before (False), or the journal is down (None): sent before?
                known = self.broker.get_order(coid)
                if known is not None:
                    self.journal.record_result(self._with_fee_estimate(
                        self.broker.wait_for_fill(known)), at)
                    after = None
                    continue
            before = after or self._holdings()
            result = self.broker.wait_for_fill(
                self.broker.submit_market_order(o.symbol, o.side, o.qty, coid))
            after = self._holdings()
            self.journal.record_result(self._with_fees(result, before, after), at)
            if result.status is OrderStatus.REJECTED:
                self.rejected_in_bar.append(f"{coid}: {result.reason}")
                self.rules_refused |= bool(RULE_WORDS.search(result.reason or ""))

    def _holdings(self) -> tuple[dict[str, float], float]:
        """(units held per symbol, cash) at the broker, to measure what a fill really did."""
        return ({s: p.qty for s, p in self.broker.positions().items()},
                self.broker.account().cash)

    def _with_fees(self, r: OrderState, before: tuple[dict, float],
                   after: tuple[dict, float]) -> OrderState:
        """The fee the broker charged, from what the fill did to the account: a buy's is taken
        from the asset (ordered units less the position's growth), a sell's from the cash (the
        notional less the cash received). A measurement outside a sane band around the
        configured rate (FEE_BAND) is not a fee, and the configured rate stands in: next to
        nothing means the broker posts it later (Alpaca: CFEE activities at the end of the
        day; the fill is marked deferred: the account pays it then), more means the account
        had not caught up with the fill yet. The booking replaces the estimate when it comes
        (`_book_fees`)."""
        if r.filled_qty <= 0 or not r.filled_avg_price:
            return r
        if r.side == "buy":
            grew = after[0].get(r.symbol, 0.0) - before[0].get(r.symbol, 0.0)
            fee_qty = max(r.filled_qty - grew, 0.0)
            measured = dataclasses.replace(r, fee_qty=fee_qty, fee=fee_qty * r.filled_avg_price)
        else:
            fee = max(r.filled_qty * r.filled_avg_price - (after[1] - before[1]), 0.0)
            measured = dataclasses.replace(r, fee=fee, fee_qty=0.0)
        estimate = self._with_fee_estimate(r)
        low, high = (estimate.fee * k for k in FEE_BAND)
        if low - 1e-9 <= measured.fee <= high + 1e-9:
            return measured
        deferred = measured.fee < low - 1e-9
        log.log(logging.INFO if deferred else logging.WARNING,
                "order %s: the account moved by a fee of %.6g USD, the configured rate says "
                "%.6g: recorded at the configured rate%s", r.client_order_id, measured.fee,
                estimate.fee, " until the broker books it" if deferred else "")
        return dataclasses.replace(estimate, fee_deferred=deferred)

    def _with_fee_estimate(self, r: OrderState) -> OrderState:
        """An order resolved after a restart: its fee at the configured rate (the account's
        state before it is gone)."""
        fee = r.filled_qty * (r.filled_avg_price or 0.0) * self.settings.fee
        return dataclasses.replace(r, fee=fee, fee_qty=r.filled_qty * self.settings.fee
                                   if r.side == "buy" else 0.0, fee_basis="estimated")

    # --- reporting -------------------------------------------------------------------------

    def snapshot(self, ts: pd.Timestamp) -> float:
        account = self.broker.account()
        positions = {s: p.qty for s, p in self.broker.positions().items()}
        self.journal.snapshot(ts, account.equity, account.cash, positions)
        return account.equity

    def reload(self, ensemble: Ensemble) -> None:
        """Swap the ensemble (call between bars only)."""
        old = self.ensemble.version if self.ensemble else None
        self.ensemble = ensemble
        self.settings = trading_settings(self.cfg, ensemble)
        log.info("ensemble v%s -> v%s (study %s, %d members)", old, ensemble.version,
                 ensemble.study, len(ensemble.members))
