"""Replay: the trading loop on a simulated clock over historical bars, with the SimBroker.

The window is `backtest.Window`'s, the same bars a backtest over the same `--from/--to`
covers. For each bar t in it: the ensemble is reloaded if a new version became current (between
bars, as live), the trader decides on the closed bar t with orders filling at bar t+1's open,
then bar t+1 is lived through: its open, high, low and close go through the stop check (the
environment's rule), and exits fill at their stop level. Features are computed once over the
whole history (they are causal: a row never depends on later bars, which a test checks), so a
year replays in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd
from sqlalchemy.engine import Engine
from tqdm import tqdm

from ..broker.sim import SimBroker
from ..common.config import Config
from ..common.errors import CappuccinoError
from ..ensemble.evaluation import MarketData, window_for
from ..ensemble.manifest import ensembles_dir
from ..ensemble.serving import EnsembleWatcher
from ..rl.window import Window
from .journal import REPLAY, Journal, StateKey, TraderState
from .trader import Trader


class ReplayError(CappuccinoError):
    """A replay that cannot run (no ensemble, no bars in the window)."""
    label = "replay"


@dataclass
class ReplayResult:
    window: Window
    equity: float
    versions: list[int]
    trader: Trader

    @property
    def bars(self) -> int:
        """The bars the replay traded through (one decision every `data.decision_bars`)."""
        return self.window.hi - 1 - self.window.lo


def replay(cfg: Config, engine: Engine, start=None, end=None, name: str = "replay",
           on_bar: Callable[[int, Trader], None] | None = None,
           progress: bool = False, reset: bool = False, broker=None) -> ReplayResult:
    """Replay the window (see `backtest.Window`; default the active study's held-out window)
    as trader `name`, with its own simulated account. A name that has state in this database
    is refused unless `reset` (which starts it afresh): two replays never share a book.
    `broker` replaces the simulated one (a test replays through Alpaca's emulator: its
    `mark` sets the emulated market's prices)."""
    journal = Journal(engine, name)
    if journal.has_state() and not reset:
        raise ReplayError(f"trader {name!r} already has state in this database (last bar "
                          f"{journal.load_state().last_bar}); pass --reset to start it afresh, "
                          "or --name to replay under another name")
    watcher = EnsembleWatcher(ensembles_dir(cfg), cfg)
    ensemble, error = watcher.poll()
    if ensemble is None:
        raise ReplayError(error or "no ensemble published (cappuccino ensemble sync)")
    market = MarketData.load(cfg)
    bars, feats = market.bars, market.features
    window = window_for(engine, bars, [ensemble], cfg.active_study, start, end,
                        decision_bars=cfg.data.decision_bars)
    i0, i1 = window.lo, window.hi
    o, h, lo, c = (bars.field(f) for f in ("open", "high", "low", "close"))
    step = pd.Timedelta(seconds=cfg.bar_seconds)
    broker = broker or SimBroker.from_config(cfg, engine, account=name)
    if reset:
        journal.reset()
        if isinstance(broker, SimBroker):
            broker.reset(cfg.broker.initial_cash)
    broker.mark(dict(zip(bars.symbols, c[i0])), at=bars.index[i0] + step)
    trader = Trader(cfg, broker, engine, name, ensemble)
    journal.save_state(TraderState(mode=REPLAY), StateKey.MODE)
    trader.start(at=bars.index[i0] + step)  # the starting capital, before the first decision
    versions = [ensemble.version]
    delay = pd.Timedelta(seconds=cfg.data.closed_bar_delay_s)
    for t in tqdm(range(i0, i1 - 1), disable=not progress, desc="replay", unit="bar"):
        new, error = watcher.poll()  # between bars, as the live loop does
        if new is not None:
            trader.reload(new)
            versions.append(new.version)
        bar_time = bars.index[t]
        broker.mark(dict(zip(bars.symbols, o[t + 1])), at=bars.index[t + 1])
        trader.on_bar(bar_time, feats[:t + 1], now=bar_time + step + delay, close=c[t])
        exits = trader.check_stops(o[t + 1], h[t + 1], lo[t + 1], c[t + 1])
        if exits:
            broker.mark(dict(exits), at=bars.index[t + 1])  # a stop fills at its level (or the open, gapped below)
            trader.exit_positions(exits, bars.index[t + 1])
        broker.mark(dict(zip(bars.symbols, c[t + 1])))  # the next open's moment
        if on_bar:
            on_bar(t, trader)
    equity = trader.snapshot(bars.index[i1 - 1] + step)
    return ReplayResult(window, equity, versions, trader)
