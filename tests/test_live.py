"""The live loop on a simulated clock: each closed bar traded once, stops between bars,
reload on request, the PID file for the ensemble sync."""

import os
import signal

import pandas as pd

from cappuccino_core.broker.sim import SimBroker
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.trading.live import LiveLoop

from ensemble_helpers import add_trial
from test_trading import setup_trader_env


class FakeClock:
    def __init__(self, start):
        self.t = pd.Timestamp(start, tz="UTC")

    def now(self):
        return self.t

    def wait(self, event, seconds):
        self.t += pd.Timedelta(seconds=max(seconds, 0.001))


class RecordingNotifier:
    def __init__(self):
        self.messages = []

    def __getattr__(self, name):
        return lambda *args: self.messages.append((name, *args))


def test_live_loop_trades_each_closed_bar_once_and_reloads(tmp_path, shared_data):
    cfg, engine, study = setup_trader_env(tmp_path, shared_data,
                                          risk={"intrabar_check_s": 600})
    broker = SimBroker(engine, 100_000, cfg.broker.taker_fee, cfg.broker.slippage_bps)
    notifier = RecordingNotifier()
    clock = FakeClock("2022-05-10 00:00:05")
    loop = LiveLoop(cfg, broker, engine, notifier, clock)
    loop.run(max_cycles=19)  # 00:00:05, 00:00:10, then every 10 minutes to 02:50:10
    assert int((cfg.state_dir / "trader.pid").read_text()) == os.getpid()
    # bars that opened at 22:00 (closed at 23:00:10), 23:00, 00:00 and 01:00 (closed 02:00:10);
    # the 02:00 bar is still open at 02:50
    assert loop.trader.last_bar == pd.Timestamp("2022-05-10 01:00", tz="UTC")
    names = [m[0] for m in notifier.messages]
    assert names[0] == "ready" and names.count("watchdog") == 19
    status = [m[1] for m in notifier.messages if m[0] == "status"][-1]
    assert status.startswith("equity ") and "ensemble v1 (study live)" in status
    assert "next bar 03:00 UTC" in status
    from cappuccino_core.storage import equity_snapshots
    import sqlalchemy as sa
    with engine.connect() as conn:
        snaps = conn.execute(sa.select(equity_snapshots.c.ts).where(
            equity_snapshots.c.trader == "paper").order_by(equity_snapshots.c.id)).scalars().all()
    # the starting capital (at the first start), then one per bar, none twice
    assert len(snaps) == len(set(snaps)) == 5
    assert snaps[0] == pd.Timestamp("2022-05-10 00:00:05").to_pydatetime()

    for i in range(4):
        add_trial(study, cfg, 5 + i, lookback=2, seed=50 + i, band=0.02)
    previous = signal.signal(signal.SIGHUP, lambda *_: loop.request_reload())  # as the daemon
    try:
        sync(cfg, engine)  # SIGHUPs the PID in trader.pid: this process
        assert loop.reload_now.is_set()
    finally:
        signal.signal(signal.SIGHUP, previous)
    loop.cycle()
    assert loop.trader.ensemble.version == 2
    assert [m[0] for m in notifier.messages[-4:]][:2] == ["reloading", "ready"]
