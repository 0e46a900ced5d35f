"""The trader: one decision per closed bar, stop checks between bars, all state in the database.

`Trader` is driven from outside (the live loop in daemons/paper_trader.py, or a replay on a
simulated clock) and knows nothing of clocks itself:

- `start()` reconciles with the broker (its positions are the truth; differences are logged)
  and resolves orders a crash left pending, by client order id.
- `on_bar(bar_time, features, now)` trades one closed bar: never a bar twice, never one older
  than `risk.stale_bar_limit_bars`. Ensemble -> target weights (saved before any order, so a
  restart in the middle of the bar finishes the same decision) -> drawdown halt -> order plan
  with the environment's arithmetic -> sells, then buys re-planned on the cash the sells
  brought -> stops updated -> equity snapshot -> the bar recorded as processed.
- `check_stops(open, high, low, close)` and `exit_positions()` apply the trailing stop and the
  stop loss with the environment's rule (`env.apply_stops`); exits sell the whole position, in
  the asset's own units, as the broker reports it.
- `reload(ensemble)` swaps the ensemble between bars.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import pandas as pd
import sqlalchemy as sa
import torch
from sqlalchemy.engine import Engine

from ..broker.base import OrderState
from ..config import Config
from ..ensemble.serving import Ensemble
from ..env import EnvSettings, apply_stops
from ..storage import equity_snapshots, fills, orders, record_event, trader_state
from .orders import PlannedOrder, client_order_id, plan_rebalance

log = logging.getLogger(__name__)


def trading_settings(cfg: Config, ensemble: Ensemble | None) -> EnvSettings:
    """Live risk and fees from the config; the no-trade band the members were trained with
    (their median), so the trader rebalances as they learnt to."""
    band = 0.0
    if ensemble is not None:
        band = float(np.median([m.spec.get("env", {}).get("min_rebalance_weight", 0.0)
                                for m in ensemble.members]))
    return EnvSettings.from_config(cfg, min_rebalance_weight=band)


class Trader:
    def __init__(self, cfg: Config, broker, engine: Engine, name: str = "paper",
                 ensemble: Ensemble | None = None,
                 wait_for_fill: Callable[[OrderState], OrderState] | None = None):
        self.cfg, self.broker, self.engine, self.name = cfg, broker, engine, name
        self.symbols = list(cfg.data.symbols)
        self.ensemble = ensemble
        self.settings = trading_settings(cfg, ensemble)
        self.wait_for_fill = wait_for_fill or (lambda order: order)
        self.rules = broker.asset_rules(self.symbols)
        self.state = self._load_state()

    # --- persistent state ------------------------------------------------------------------

    def _load_state(self) -> dict:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(trader_state.c.key, trader_state.c.value).where(
                trader_state.c.trader == self.name)).all()
        state = {"stops": {}, "last_bar": None, "equity_peak": None, "halted": False,
                 "decision": None}
        state.update({k: v for k, v in rows})
        return state

    def _save_state(self, *keys: str) -> None:
        with self.engine.begin() as conn:
            for key in keys:
                conn.execute(trader_state.delete().where(trader_state.c.trader == self.name,
                                                         trader_state.c.key == key))
                conn.execute(trader_state.insert().values(trader=self.name, key=key,
                                                          value=self.state[key]))

    @property
    def last_bar(self) -> pd.Timestamp | None:
        v = self.state["last_bar"]
        return None if v is None else pd.Timestamp(v)

    # --- start-up --------------------------------------------------------------------------

    def start(self) -> None:
        """Resolve orders left pending by a crash, then reconcile with the broker."""
        with self.engine.connect() as conn:
            pending = conn.execute(sa.select(orders.c.client_order_id).where(
                orders.c.trader == self.name,
                orders.c.status.in_(["pending_submit", "new", "partially_filled"]))).scalars()
            pending = list(pending)
        for coid in pending:
            found = self.broker.get_order(coid)
            if found is None:
                self._update_order(coid, status="not_sent")
                log.warning("order %s was never received by the broker", coid)
            else:
                self._journal_result(self.wait_for_fill(found))
                log.info("order %s resolved after restart: %s", coid, found.status)
        self.reconcile()
        self._save_state("stops")

    def reconcile(self) -> None:
        """The broker's positions are the truth: adopt them, log what the state disagreed on."""
        positions = self.broker.positions()
        stops = self.state["stops"]
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

    def on_bar(self, bar_time: pd.Timestamp, features: np.ndarray, now: pd.Timestamp) -> str:
        """Trade the closed bar that opened at `bar_time`. Returns what happened."""
        if self.last_bar is not None and bar_time <= self.last_bar:
            return "already processed"
        age = now - (bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds))
        if age > pd.Timedelta(seconds=self.cfg.bar_seconds * self.cfg.risk.stale_bar_limit_bars):
            log.warning("bar %s is %s old: too stale to trade, skipped", bar_time, age)
            self._mark_processed(bar_time)
            return "stale"
        if self.ensemble is None:
            return "no ensemble"
        self.reconcile()
        prices = self._prices()
        account = self.broker.account()
        positions = self.broker.positions()
        value = np.array([positions[s].qty * prices[i] if s in positions else 0.0
                          for i, s in enumerate(self.symbols)])
        equity = account.cash + value.sum()
        decided = self.state.get("decision") or {}
        if decided.get("bar") == bar_time.isoformat():
            target = np.array(decided["target"])  # resuming a bar a crash interrupted
        else:
            target = self.ensemble.target_weights(features, account.cash / equity,
                                                  value / equity)
            target = self._drawdown_guard(target, value / equity, equity)
            self.state["decision"] = {"bar": bar_time.isoformat(), "target": target.tolist(),
                                      "ensemble": self.ensemble.version}
            self._save_state("decision", "equity_peak", "halted")  # before any order
        plan = plan_rebalance(target, self.symbols, positions, account.cash, prices,
                              self.settings, self.rules)
        self._execute([o for o in plan if o.side == "sell"], bar_time)
        # buys re-planned on the cash the sells actually brought
        account, positions = self.broker.account(), self.broker.positions()
        plan = plan_rebalance(target, self.symbols, positions, account.cash, prices,
                              self.settings, self.rules)
        self._execute([o for o in plan if o.side == "buy"], bar_time)
        self._update_stops(prices)
        self.snapshot(bar_time + pd.Timedelta(seconds=self.cfg.bar_seconds))
        self._mark_processed(bar_time)
        return "traded"

    def _prices(self) -> np.ndarray:
        latest = self.broker.latest_prices(self.symbols)
        return np.array([latest[s] for s in self.symbols])

    def _drawdown_guard(self, target: np.ndarray, current: np.ndarray, equity: float):
        """Past `risk.max_drawdown_halt_pct` below the equity peak: no new buying."""
        peak = max(self.state["equity_peak"] or equity, equity)
        self.state["equity_peak"] = peak
        limit = self.cfg.risk.max_drawdown_halt_pct
        halted = limit is not None and equity <= peak * (1 - limit)
        if halted != self.state["halted"]:
            self.state["halted"] = halted
            msg = (f"drawdown {1 - equity / peak:.1%} from peak {peak:,.2f}: "
                   + ("new buying halted" if halted else "buying resumes"))
            log.warning(msg)
            record_event(self.engine, self.name, "warning", "drawdown_halt", msg)
        if halted:
            assets = np.minimum(target[:-1], current)
            return np.concatenate([assets, [1 - assets.sum()]])
        return target

    def _mark_processed(self, bar_time: pd.Timestamp) -> None:
        """The bar is done: its stops, equity peak and the bar itself are saved together."""
        self.state["last_bar"] = bar_time.isoformat()
        self._save_state("stops", "equity_peak", "halted", "last_bar")

    # --- stops -----------------------------------------------------------------------------

    def check_stops(self, bar_open, high, low, close) -> list[tuple[str, float]]:
        """Stops hit by prices seen since the last check (arrays in symbol order; one live
        price goes in as all four). Updates the peaks; returns [(symbol, exit price)]."""
        stops = self.state["stops"]
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
        self._save_state("stops")
        return exits

    def exit_positions(self, exits: list[tuple[str, float]], when: pd.Timestamp) -> None:
        """Sell every unit of each position whose stop was hit."""
        positions = self.broker.positions()
        plan = [PlannedOrder(s, "sell", positions[s].qty, "stop") for s, _ in exits
                if s in positions]
        for s, price in exits:
            msg = f"stop exit {s} at {price:.6g} (peak {self.state['stops'][s]['peak']:.6g})"
            log.warning(msg)
            record_event(self.engine, self.name, "warning", "stop_exit", msg,
                         {"symbol": s, "price": price})
        self._execute(plan, when)
        for s, _ in exits:  # a stopped position starts afresh if it is bought again
            self.state["stops"].pop(s, None)
        self._update_stops(self._prices())
        self._save_state("stops")

    def _update_stops(self, prices: np.ndarray) -> None:
        """New positions start their stop at the entry price; closed ones lose it."""
        positions = self.broker.positions()
        stops = self.state["stops"]
        for a, s in enumerate(self.symbols):
            if s in positions and s not in stops:
                entry = positions[s].avg_entry_price
                stops[s] = {"entry": entry, "peak": max(entry, float(prices[a]))}
            elif s not in positions:
                stops.pop(s, None)

    # --- orders ----------------------------------------------------------------------------

    def _execute(self, plan: list[PlannedOrder], when: pd.Timestamp) -> None:
        for o in plan:
            coid = client_order_id(self.name, o.purpose, when, o.symbol, o.side)
            if not self._journal_new(coid, o, when):  # journaled before: sent before?
                known = self.broker.get_order(coid)
                if known is not None:
                    self._journal_result(self.wait_for_fill(known))
                    continue
            result = self.broker.submit_market_order(o.symbol, o.side, o.qty, coid)
            self._journal_result(self.wait_for_fill(result))

    def _journal_new(self, coid: str, o: PlannedOrder, when: pd.Timestamp) -> bool:
        """Write the order to the journal before it is sent; False if it was already there."""
        try:
            with self.engine.begin() as conn:
                conn.execute(orders.insert().values(
                    client_order_id=coid, trader=self.name, bar_time=when.to_pydatetime(),
                    symbol=o.symbol, side=o.side, qty=o.qty, reason=o.purpose,
                    status="pending_submit"))
            return True
        except sa.exc.IntegrityError:
            return False

    def _update_order(self, coid: str, **values) -> None:
        with self.engine.begin() as conn:
            conn.execute(orders.update().where(orders.c.client_order_id == coid).values(
                updated_at=datetime.now(timezone.utc), **values))

    def _journal_result(self, r: OrderState) -> None:
        with self.engine.begin() as conn:
            prev = conn.execute(sa.select(orders.c.filled_qty).where(
                orders.c.client_order_id == r.client_order_id)).scalar() or 0.0
            conn.execute(orders.update().where(
                orders.c.client_order_id == r.client_order_id).values(
                status=r.status, broker_order_id=r.broker_id, filled_qty=r.filled_qty,
                filled_avg_price=r.filled_avg_price, fee=r.fee,
                updated_at=datetime.now(timezone.utc)))
            if r.filled_qty > prev + 1e-12 and r.filled_avg_price:
                conn.execute(fills.insert().values(
                    client_order_id=r.client_order_id, symbol=r.symbol, side=r.side,
                    qty=r.filled_qty - prev, price=r.filled_avg_price,
                    fee=r.fee * (r.filled_qty - prev) / max(r.filled_qty, 1e-300)))
        if r.status == "rejected":
            log.error("order %s rejected: %s", r.client_order_id, r.reason)
            record_event(self.engine, self.name, "error", "order_rejected",
                         f"{r.client_order_id}: {r.reason}")

    # --- reporting -------------------------------------------------------------------------

    def snapshot(self, ts: pd.Timestamp) -> float:
        account = self.broker.account()
        positions = {s: p.qty for s, p in self.broker.positions().items()}
        with self.engine.begin() as conn:
            conn.execute(equity_snapshots.insert().values(
                trader=self.name, ts=ts.to_pydatetime(), equity=account.equity,
                cash=account.cash, positions=positions))
        return account.equity

    def reload(self, ensemble: Ensemble) -> None:
        """Swap the ensemble (call between bars only)."""
        old = self.ensemble.version if self.ensemble else None
        self.ensemble = ensemble
        self.settings = trading_settings(self.cfg, ensemble)
        log.info("ensemble v%s -> v%s (study %s, %d members)", old, ensemble.version,
                 ensemble.study, len(ensemble.members))
