"""The live paper-trading loop: closed bars, stop checks between them, reloads, systemd.

Every cycle (at most `risk.intrabar_check_s` apart, and at each bar's close plus the closed-bar
delay): pick up a new ensemble version if one became current (between bars only), trade the
newest closed bar if it has not been traded, check the stops against the latest prices, ping
the watchdog from this loop itself and publish a one-line STATUS. SIGHUP (ExecReload=, or the
ensemble sync) makes the next cycle look for a new version at once.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config
from ..data import load_bars
from ..data.bars import closed_end
from ..data.features import LIVE_HISTORY, compute_features
from ..ensemble.publish import ensembles_dir
from ..ensemble.serving import EnsembleWatcher
from ..service import Notifier
from .trader import Trader

log = logging.getLogger(__name__)


class SystemClock:
    def now(self) -> pd.Timestamp:
        return pd.Timestamp.now(tz="UTC")

    def wait(self, event: threading.Event, seconds: float) -> None:
        event.wait(max(0.0, seconds))


class LiveLoop:
    def __init__(self, cfg: Config, broker, engine, notifier: Notifier | None = None,
                 clock=None, name: str = "paper"):
        self.cfg, self.broker, self.engine, self.name = cfg, broker, engine, name
        self.notifier = notifier or Notifier()
        self.clock = clock or SystemClock()
        self.stop = threading.Event()
        self.reload_now = threading.Event()
        self.wake = threading.Event()
        self.watcher = EnsembleWatcher(ensembles_dir(cfg), cfg)
        self.trader: Trader | None = None
        self.bar = pd.Timedelta(seconds=cfg.bar_seconds)

    # --- signals -----------------------------------------------------------------------

    def request_reload(self) -> None:
        self.reload_now.set()
        self.wake.set()

    def request_stop(self) -> None:
        self.stop.set()
        self.wake.set()

    # --- the loop ----------------------------------------------------------------------

    def write_pid(self) -> Path:
        path = self.cfg.state_dir / "trader.pid"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
        return path

    def start(self) -> None:
        self.write_pid()
        ensemble, error = self.watcher.poll()
        if error:
            log.error(error)
        if ensemble is None:
            log.warning("no ensemble yet: the trader waits for `cappuccino ensemble sync`")
        self.trader = Trader(self.cfg, self.broker, self.engine, self.name, ensemble)
        self.trader.start(at=self.clock.now())
        self.notifier.ready(self.status_line())
        log.info("trader %s ready: %s", self.name, self.status_line())

    def run(self, max_cycles: int | None = None) -> None:
        self.start()
        cycles = 0
        while not self.stop.is_set():
            self.cycle()
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
            self.wake.clear()
            self.clock.wait(self.wake, self.seconds_to_next_cycle())
        self.notifier.stopping()

    def cycle(self) -> None:
        now = self.clock.now()
        self.maybe_reload()
        newest = closed_end(now, self.cfg.bar_seconds, self.cfg.data.closed_bar_delay_s) - self.bar
        if self.trader.last_bar is None or newest > self.trader.last_bar:
            self.trade_bar(newest, now)
        self.check_stops(now)
        self.notifier.watchdog()
        self.notifier.status(self.status_line(now))

    def maybe_reload(self) -> None:
        self.reload_now.clear()
        ensemble, error = self.watcher.poll()
        if error:
            log.error(error)
        if ensemble is not None:
            self.notifier.reloading()
            self.trader.reload(ensemble)
            self.notifier.ready(self.status_line())

    def trade_bar(self, bar_time: pd.Timestamp, now: pd.Timestamp) -> None:
        start = bar_time - self.bar * (LIVE_HISTORY - 1)
        bars = load_bars(self.cfg, start=start, end=bar_time + self.bar, now=now)
        if len(bars) == 0 or bars.index[-1] != bar_time:
            log.warning("bar %s not available yet (newest %s)", bar_time,
                        bars.index[-1] if len(bars) else None)
            return
        self.broker.mark(dict(zip(bars.symbols, bars.close[-1])))
        result = self.trader.on_bar(bar_time, compute_features(bars), now, close=bars.close[-1])
        log.info("bar %s: %s", bar_time, result)

    def check_stops(self, now: pd.Timestamp) -> None:
        latest = self.broker.latest_prices(self.trader.symbols)
        if len(latest) != len(self.trader.symbols):
            return
        px = np.array([latest[s] for s in self.trader.symbols])
        exits = self.trader.check_stops(px, px, px, px)
        if exits:
            self.trader.exit_positions(exits, now.floor("min"))

    def seconds_to_next_cycle(self) -> float:
        now = self.clock.now()
        next_close = closed_end(now, self.cfg.bar_seconds, self.cfg.data.closed_bar_delay_s) \
            + self.bar + pd.Timedelta(seconds=self.cfg.data.closed_bar_delay_s)
        return min(self.cfg.risk.intrabar_check_s, (next_close - now).total_seconds())

    def status_line(self, now: pd.Timestamp | None = None) -> str:
        t = self.trader
        if t is None:
            return "starting"
        account = self.broker.account()
        ens = (f"ensemble v{t.ensemble.version} (study {t.ensemble.study})" if t.ensemble
               else "no ensemble")
        now = now or self.clock.now()
        nxt = closed_end(now, self.cfg.bar_seconds, 0) + self.bar
        return (f"equity {account.equity:,.2f} | {len(self.broker.positions())} positions | "
                f"{ens} | next bar {nxt:%H:%M} UTC")
