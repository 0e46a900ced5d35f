"""The live paper-trading loop: closed bars, stop checks between them, reloads, systemd.

Every cycle (at most `risk.intrabar_check_s` apart, and at each bar's close plus the closed-bar
delay): write what a database outage held back, pick up a new ensemble version if one became
current (between bars only), trade the newest closed bar if it has not been traded, check the
stops against the latest prices, ping the watchdog from this loop itself and publish a
one-line STATUS. SIGHUP (ExecReload=, or the ensemble sync) makes the next cycle look for a
new version at once.

Nothing that goes wrong in one step ends the loop: a data error, a database outage or a broker
error is logged once ("degraded: <cause>", at error priority), STATUS says so, the failed step
is retried on the next cycle, sooner at first and backing off to `intrabar_check_s`, and the
stops keep being checked against the broker's prices all along (they need no database). The
first cycle in which every step succeeds logs "recovered". A hung loop stops pinging the
watchdog, and only then does systemd restart the trader.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.config import Config
from ..common.errors import first_line
from ..common.files import atomic_write_text
from ..common.service import Notifier
from ..data import load_bars
from ..data.bars import closed_end
from ..data.features import LIVE_HISTORY, compute_features
from ..ensemble.manifest import ensembles_dir, venue_warnings
from ..ensemble.serving import EnsembleWatcher
from .journal import LIVE, StateKey, TraderState
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
        self.problems: dict[str, str] = {}  # step -> cause, while degraded
        self.degraded_since: float | None = None
        self.failed_cycles = 0
        self.orders_refused: str | None = None  # why the last bar traded's orders were refused

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
        return atomic_write_text(path, f"{os.getpid()}\n")

    def start(self) -> None:
        self.write_pid()
        ensemble, skipped = self.watcher.newest_loadable()
        for line in skipped:
            log.error("%s; skipped", line)
        if skipped:
            self._record_refusal(skipped)
        if ensemble is None:
            log.warning("no ensemble yet: the trader waits for `cappuccino ensemble sync`")
        elif skipped:
            log.warning("serving ensemble v%d, the newest version that loads", ensemble.version)
        for warning in venue_warnings(self.cfg):
            log.warning(warning)
        self.trader = Trader(self.cfg, self.broker, self.engine, self.name, ensemble)
        self.trader.journal.save_state(TraderState(mode=LIVE), StateKey.MODE)
        self.trader.start(at=self.clock.now())
        self.notifier.ready(self.status_line())
        log.info("trader %s ready: %s", self.name, self.status_line())

    def run(self, max_cycles: int | None = None) -> None:
        if self.trader is None:
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
        problems: dict[str, str] = {}

        def step(name: str, action) -> None:
            try:
                action()
            except Exception as e:  # noqa: BLE001 - one failed step never ends the loop
                problems[name] = _one_line(e)
                log.debug("%s failed", name, exc_info=True)

        step("journal", self.flush_journal)
        step("reload", self.maybe_reload)
        newest = closed_end(now, self.cfg.bar_seconds, self.cfg.data.closed_bar_delay_s) - self.bar
        if self.trader.last_bar is None or newest > self.trader.last_bar:
            step(f"bar {newest:%Y-%m-%d %H:%M}", lambda: self.trade_bar(newest, now))
        step("stop check", lambda: self.check_stops(now))
        if self.orders_refused:
            problems.setdefault("orders", self.orders_refused)
        self.note_health(problems)
        self.notifier.watchdog()  # from this loop only: a hung loop is restarted by systemd
        self.notifier.status(self.status_line(now))

    def _record_refusal(self, lines: list[str]) -> None:
        """Tell `status` and `ensemble show` that a version did not load here."""
        from ..storage.database import record_event
        try:
            record_event(self.engine, self.name, "error", "ensemble_refused", "; ".join(lines),
                         {"versions": [line.split()[1] for line in lines]})
        except Exception:  # noqa: BLE001 - the refusal is logged already
            log.debug("could not record the refusal", exc_info=True)

    def flush_journal(self) -> None:
        written = self.trader.journal.flush()
        if written:
            log.info("wrote %d journal entries an outage had held back", written)

    def note_health(self, problems: dict[str, str]) -> None:
        """Say "degraded" once when trouble starts and "recovered" once when it ends."""
        if problems and not self.problems:
            self.degraded_since = time.monotonic()
            why = "; ".join(f"{k}: {v}" for k, v in problems.items())
            log.error("degraded: %s", why)
            try:  # the monitor alerts it once (and the recovery once)
                self.trader.journal.event("error", "degraded", f"degraded: {why}")
            except Exception:  # noqa: BLE001 - with the database down, the log says it
                log.debug("could not record the degradation", exc_info=True)
        elif problems and problems.keys() != self.problems.keys():
            log.debug("still degraded: %s", "; ".join(f"{k}: {v}" for k, v in problems.items()))
        elif not problems and self.problems:
            took = time.monotonic() - (self.degraded_since or time.monotonic())
            log.warning("recovered after %.0f s (%s)", took, "; ".join(self.problems))
            try:
                self.trader.journal.event("warning", "recovered",
                                          f"recovered after {took:.0f} s: "
                                          + "; ".join(f"{k}: {v}" for k, v in self.problems.items()))
            except Exception:  # noqa: BLE001 - a note about the past is no reason to fail now
                log.debug("could not record the recovery", exc_info=True)
        retry = set(problems) - {"orders"}  # a refused bar is not retried: its orders are final
        self.failed_cycles = self.failed_cycles + 1 if retry else 0
        self.problems = problems

    def maybe_reload(self) -> None:
        self.reload_now.clear()
        ensemble, error = self.watcher.poll()
        if error:
            log.error(error)
            self._record_refusal([error])
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
        quiet = [s for s, f in zip(bars.symbols, bars.filled[-1]) if f]
        if quiet:  # no print in the bar (Alpaca emits none without trades): not a reason to wait
            log.warning("bar %s: no bar for %s; flat at the last close", bar_time,
                        ", ".join(quiet))
        self.broker.mark(dict(zip(bars.symbols, bars.close[-1])), at=now)
        if self.cfg.risk.stop_check == "close":  # the bar's close, before its decision
            close = bars.close[-1]
            exits = self.trader.check_stops(close, close, close, close)
            if exits:
                self.trader.exit_positions(exits, now.floor("min"))
        features = compute_features(bars, self.cfg.data.feature_set)
        result = self.trader.on_bar(bar_time, features, now, close=bars.close[-1], quiet=quiet)
        log.info("bar %s: %s", bar_time, result)
        # orders refused bar after bar are trouble that outlives the cycle: it stays until a
        # bar trades without a refusal
        refused = self.trader.rejected_in_bar
        if result == "traded":
            self.orders_refused = (f"{len(refused)} order(s) of bar {bar_time:%Y-%m-%d %H:%M} "
                                   f"rejected, e.g. {refused[0]}") if refused else None

    def check_stops(self, now: pd.Timestamp) -> None:
        """Between bars, against the latest trades (`stop_check: close`: at the bar only)."""
        if self.cfg.risk.stop_check == "close":
            return
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
        wait = min(self.cfg.risk.intrabar_check_s, (next_close - now).total_seconds())
        if self.failed_cycles:  # retry soon, then back off: 2, 4, 8 ... s
            wait = min(wait, 2.0 ** min(self.failed_cycles, 10))
        return wait

    def status_line(self, now: pd.Timestamp | None = None) -> str:
        if self.problems:
            return "degraded: " + "; ".join(f"{k}: {v}" for k, v in self.problems.items())
        try:
            return self._status_line(now)
        except Exception as e:  # noqa: BLE001 - the status line itself must not end the loop
            return f"degraded: status: {_one_line(e)}"

    def _status_line(self, now: pd.Timestamp | None = None) -> str:
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


def _one_line(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message (secrets
    masked)."""
    return f"{type(e).__name__}: {first_line(e)}"
