"""Replay: the trading loop on a simulated clock over historical bars, with the SimBroker.

For each bar t in the range: the ensemble is reloaded if a new version became current (between
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
from ..config import Config
from ..data import load_bars, to_utc
from ..data.features import WARMUP, compute_features
from ..ensemble.publish import ensembles_dir
from ..ensemble.serving import EnsembleWatcher
from .trader import Trader


class ReplayError(Exception):
    pass


@dataclass
class ReplayResult:
    bars: int
    start: pd.Timestamp
    end: pd.Timestamp
    equity: float
    versions: list[int]
    trader: Trader


def replay(cfg: Config, engine: Engine, start=None, end=None, name: str = "replay",
           on_bar: Callable[[int, Trader], None] | None = None,
           progress: bool = False) -> ReplayResult:
    bars = load_bars(cfg)
    feats = compute_features(bars)
    i0 = max(WARMUP, int(bars.index.searchsorted(to_utc(start, bars.index[0]))))
    i1 = min(len(bars), int(bars.index.searchsorted(to_utc(end, bars.index[-1] + pd.Timedelta(1)))))
    if i1 - i0 < 2:
        raise ReplayError(f"no bars to replay between {start} and {end} "
                          f"(data: {bars.index[0]} .. {bars.index[-1]})")
    o, h, lo, c = (bars.field(f) for f in ("open", "high", "low", "close"))
    broker = SimBroker.from_config(cfg, engine, account=name)
    broker.mark(dict(zip(bars.symbols, c[i0])))
    watcher = EnsembleWatcher(ensembles_dir(cfg), cfg)
    ensemble, error = watcher.poll()
    if ensemble is None:
        raise ReplayError(error or "no ensemble published (cappuccino ensemble sync)")
    trader = Trader(cfg, broker, engine, name, ensemble)
    trader.start()
    versions = [ensemble.version]
    step = pd.Timedelta(seconds=cfg.bar_seconds)
    delay = pd.Timedelta(seconds=cfg.data.closed_bar_delay_s)
    for t in tqdm(range(i0, i1 - 1), disable=not progress, desc="replay", unit="bar"):
        new, error = watcher.poll()  # between bars, as the live loop does
        if new is not None:
            trader.reload(new)
            versions.append(new.version)
        bar_time = bars.index[t]
        broker.mark(dict(zip(bars.symbols, o[t + 1])))
        trader.on_bar(bar_time, feats[:t + 1], now=bar_time + step + delay)
        exits = trader.check_stops(o[t + 1], h[t + 1], lo[t + 1], c[t + 1])
        if exits:
            broker.mark(dict(exits))  # a stop fills at its level (or the open, gapped below)
            trader.exit_positions(exits, bars.index[t + 1])
        broker.mark(dict(zip(bars.symbols, c[t + 1])))
        if on_bar:
            on_bar(t, trader)
    equity = trader.snapshot(bars.index[i1 - 1] + step)
    return ReplayResult(i1 - 1 - i0, bars.index[i0], bars.index[i1 - 1], equity, versions, trader)


def fills_table(engine: Engine, trader: str) -> list[tuple]:
    """(client order id, symbol, side, qty, price, fee) of every fill, in order."""
    import sqlalchemy as sa

    from ..storage import fills, orders
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(fills.c.client_order_id, fills.c.symbol, fills.c.side, fills.c.qty,
                      fills.c.price, fills.c.fee)
            .join(orders, orders.c.client_order_id == fills.c.client_order_id)
            .where(orders.c.trader == trader).order_by(fills.c.id)).all()
    return [tuple(r) for r in rows]


