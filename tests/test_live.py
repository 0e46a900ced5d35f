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
    from cappuccino_core.storage.database import equity_snapshots
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


class RefusingBroker(SimBroker):
    """Alpaca answering 'insufficient balance' (or anything) to every order while `refuse`."""
    refuse = True

    def submit_market_order(self, symbol, side, qty, client_order_id):
        if not self.refuse:
            return super().submit_market_order(symbol, side, qty, client_order_id)
        from cappuccino_core.broker.base import OrderState, OrderStatus
        order = OrderState(client_order_id, symbol, side, qty, 0.0, None, OrderStatus.REJECTED,
                           reason="account is restricted")
        with self.engine.begin() as conn:
            self._record(order, conn)
        return order


def test_orders_refused_bar_after_bar_degrade_the_trader_and_alert_once(tmp_path, shared_data):
    import sqlalchemy as sa

    from cappuccino_core.operations.monitor import run_checks
    from cappuccino_core.storage.database import events
    from conftest import webhook_receiver, write_config
    from cappuccino_core.common.config import load_config
    with webhook_receiver() as (url, received):
        cfg, engine, _ = setup_trader_env(tmp_path, shared_data, risk={"intrabar_check_s": 600})
        d = cfg.config_dir
        cfg = load_config(write_config(tmp_path / "etc", {
            "paths": {"state_dir": str(cfg.state_dir)},
            "data": {"csv_path": str(shared_data), "symbols": list(cfg.data.symbols)},
            "ensemble": {"top_n": 4, "min_members": 1},
            "risk": {"intrabar_check_s": 600, "trailing_stop_pct": 0.10},
            "alerts": {"urls": [f"json://{url.removeprefix('http://')}/hook"]}}))
        assert cfg.config_dir == d
        broker = RefusingBroker(engine, 100_000, cfg.broker.taker_fee, cfg.broker.slippage_bps)
        loop = LiveLoop(cfg, broker, engine, RecordingNotifier(), FakeClock("2022-05-10 00:00:05"))
        loop.run(max_cycles=19)  # four bars, every order refused
        assert "orders" in loop.problems and "rejected" in loop.status_line()
        assert loop.failed_cycles == 0  # a refused bar is final: no retry storm
        with engine.connect() as conn:
            kinds = conn.execute(sa.select(events.c.kind).where(events.c.source == "paper")
                                 ).scalars().all()
        assert kinds.count("degraded") == 1 and "recovered" not in kinds
        run_checks(cfg, engine)
        run_checks(cfg, engine)
        degraded = [b for _, b in received if "trader-degraded" in b["title"]]
        assert len(degraded) == 1 and "| trader paper |" in degraded[0]["message"]
        broker.refuse = False  # the account works again: the next bar trades
        loop.run(max_cycles=7)
        assert not loop.problems
        run_checks(cfg, engine)
        assert len([b for _, b in received if "trader-recovered" in b["title"]]) == 1


def test_stops_checked_at_the_close_ignore_ticks_between_bars(tmp_path, shared_data):
    """`risk.stop_check: close` (issue 26): a trade far below every stop level between bars
    sells nothing (the bar's close decides, in trade_bar); the same price taken as a close
    would have exited, so it is the live loop that waits."""
    import numpy as np
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data,
                                      risk={"stop_check": "close", "intrabar_check_s": 600})
    broker = SimBroker(engine, 100_000, cfg.broker.taker_fee, cfg.broker.slippage_bps)
    clock = FakeClock("2022-05-10 00:00:05")
    loop = LiveLoop(cfg, broker, engine, RecordingNotifier(), clock)
    loop.run(max_cycles=2)
    held = set(loop.trader.state.stops)
    assert held
    crash = {s: p * 0.5 for s, p in broker.prices.items()}
    broker.mark(crash)
    loop.check_stops(clock.now())
    assert set(loop.trader.state.stops) == held and set(broker.positions()) >= held
    px = np.array([crash[s] for s in loop.trader.symbols])
    assert {s for s, _ in loop.trader.check_stops(px, px, px, px)} == held
