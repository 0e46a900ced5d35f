"""Nothing stops the trader from checking its stops: the loop through a database outage, a
data error, and an unloadable model (issue 12)."""

import logging

import numpy as np
import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa

from cappuccino_core.storage import events, orders
from cappuccino_core.trading.live import LiveLoop

from alpaca_emulator import AlpacaEmulator, RunningEmulator
from conftest import PG_ADMIN_URL
from test_alpaca_broker import broker_for
from test_live import FakeClock, RecordingNotifier
from test_trading import SYMBOLS, setup_trader_env


class Outage:
    """Takes a real PostgreSQL database away (no new connection, the open ones cut) and
    brings it back."""

    def __init__(self, url: str):
        self.name = url.rsplit("/", 1)[1]
        self.admin = psycopg2.connect(PG_ADMIN_URL)
        self.admin.autocommit = True

    def down(self):
        with self.admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (self.name,))

    def up(self):
        with self.admin.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')


@pytest.fixture
def emulator():
    with RunningEmulator(AlpacaEmulator()) as running:
        yield running


def test_a_database_outage_neither_ends_the_loop_nor_delays_a_stop(tmp_path, shared_data,
                                                                   pg_url, emulator, caplog):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, storage={"url": pg_url},
                                      risk={"intrabar_check_s": 60})
    from cappuccino_core.data import load_bars
    bars = load_bars(cfg, end="2022-05-10")
    emu = emulator.emulator
    emu.prices.update(dict(zip(SYMBOLS, map(float, bars.close[-1]))))
    notifier = RecordingNotifier()
    clock = FakeClock("2022-05-10 00:00:15")
    loop = LiveLoop(cfg, broker_for(emulator), engine, notifier, clock)
    loop.start()
    loop.cycle()  # trades the bar that closed at 00:00
    held = {s: p.qty for s, p in loop.broker.positions().items()}
    assert held, "the first bar should open positions"
    outage = Outage(pg_url)
    caplog.set_level(logging.INFO, logger="cappuccino_core")
    try:
        outage.down()
        # during the outage: a new bar cannot be journaled, the prices crash through the stops
        clock.t = pd.Timestamp("2022-05-10 01:00:15", tz="UTC")
        emu.prices.update({s: p * 0.85 for s, p in emu.prices.items()})
        for _ in range(3):  # three cycles of the outage: the loop goes on
            loop.cycle()
            clock.t += pd.Timedelta(seconds=loop.seconds_to_next_cycle())
        stops = {o["symbol"]: float(o["qty"]) for o in emu.posted_orders()
                 if "-stop-" in o["client_order_id"]}
        assert stops == held  # every position sold whole, without the database
        assert loop.broker.positions() == {}
        status = [m[1] for m in notifier.messages if m[0] == "status"][-1]
        assert status.startswith("degraded: ") and "bar 2022-05-10 00:00" in status
        assert loop.seconds_to_next_cycle() < 60  # retried sooner than the usual cycle
        assert loop.trader.journal.pending  # the exits' journal entries wait in memory
    finally:
        outage.up()
    loop.cycle()  # the database is back: the held-back entries are written, the bar traded
    assert not loop.trader.journal.pending and not loop.problems
    with engine.connect() as conn:
        rows = conn.execute(sa.select(orders.c.symbol, orders.c.status, orders.c.filled_qty)
                            .where(orders.c.reason == "stop")).all()
        assert {r.symbol: r.filled_qty for r in rows} == held
        assert {r.status for r in rows} == {"filled"}
        recovered = conn.execute(sa.select(events.c.message).where(
            events.c.kind == "recovered")).scalars().all()
    assert len(recovered) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("degraded:")]) == 1
    assert len([m for m in messages if m.startswith("recovered after")]) == 1
    assert "journal entries an outage had held back" in caplog.text
    assert loop.trader.last_bar == pd.Timestamp("2022-05-10 00:00", tz="UTC")


def test_a_data_error_is_one_line_and_the_loop_goes_on(tmp_path, shared_data, caplog):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    from cappuccino_core.broker.sim import SimBroker
    broker = SimBroker(engine, 100_000, cfg.broker.taker_fee, cfg.broker.slippage_bps)
    loop = LiveLoop(cfg, broker, engine, RecordingNotifier(), FakeClock("2022-05-10 00:00:15"))
    loop.start()
    good = loop.trade_bar
    calls = []

    def broken(bar_time, now):
        calls.append(bar_time)
        raise ValueError("BTC/USD 2022-05-09 23:00: NaN or infinite value\nsecond line")
    loop.trade_bar = broken
    loop.cycle()
    loop.cycle()
    assert len(calls) == 2  # retried, the loop alive
    (line,) = [r for r in caplog.records if r.getMessage().startswith("degraded:")]
    assert line.levelno == logging.ERROR and "\n" not in line.getMessage()
    assert "ValueError: BTC/USD 2022-05-09 23:00: NaN or infinite value" in line.getMessage()
    loop.trade_bar = good
    loop.cycle()
    assert loop.trader.last_bar is not None and not loop.problems
    assert np.isfinite(loop.broker.account().equity)


def test_a_model_that_does_not_load_is_never_published_and_a_restart_serves_the_last_good(
        tmp_path, shared_data, caplog, capsys):
    """v1 good; v2 published, then one member truncated on disk (its checksum recorded
    before). A restarted trader serves v1 and says why; status and show call v2 broken; the
    next sync test-loads every member and does not publish the truncated one again."""
    import optuna

    from cappuccino_core import cli
    from cappuccino_core.broker.sim import SimBroker
    from cappuccino_core.ensemble.publish import current_dir, ensembles_dir, sync
    from ensemble_helpers import add_trial
    cfg, engine, study = setup_trader_env(tmp_path, shared_data)
    assert current_dir(ensembles_dir(cfg)).name == "v000001"
    late = add_trial(study, cfg, 9.0, seed=9)
    assert sync(cfg, engine).version == 2
    member = current_dir(ensembles_dir(cfg)) / "members" / str(late._trial_id) / "model.pt"
    member.write_bytes(member.read_bytes()[:100])  # truncated after publishing
    broker = SimBroker(engine, 100_000, 0.0025, 5)
    loop = LiveLoop(cfg, broker, engine, RecordingNotifier(), FakeClock("2022-05-10 00:00:15"))
    caplog.set_level(logging.INFO, logger="cappuccino_core")
    loop.start()
    assert loop.trader.ensemble.version == 1
    assert "ensemble v000002 does not load" in caplog.text
    assert "serving ensemble v1, the newest version that loads" in caplog.text
    assert cli.main(["status", "--config-dir", cfg.config_dir]) in (0, 1)
    assert "ENSEMBLE v2 IS BROKEN" in capsys.readouterr().out
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 0
    assert "BROKEN: ensemble v2" in capsys.readouterr().out
    # the trial's own artifact is truncated too (hard links): the sync refuses it
    (cfg.state_dir / "trader.pid").unlink()  # (the sync would SIGHUP this test's process)
    result = sync(cfg, engine)
    assert late._trial_id not in {m.trial_id for m in result.selection.members}
    assert any(tid == late._trial_id for tid, _, _ in result.selection.skipped)
    assert optuna.trial.TrialState.COMPLETE == study.trials[-1].state
