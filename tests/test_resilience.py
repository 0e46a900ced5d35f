"""Nothing stops the trader from checking its stops: the loop through a database outage, a
data error, and an unloadable model (issue 12)."""

import logging
import shutil

import numpy as np
import pandas as pd
import psycopg2
import pytest
import sqlalchemy as sa

from cappuccino_core.storage.database import events, orders
from cappuccino_core.trading.live import LiveLoop

from alpaca_emulator import AlpacaEmulator, RunningEmulator
from conftest import PG_ADMIN_URL
from test_alpaca_broker import broker_for
from test_live import FakeClock, RecordingNotifier
from ensemble_helpers import stored_file
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
    next sync finds the cached copy damaged too (hard links), fetches the model again from
    the artifact store and publishes a whole v3."""
    import optuna

    from cappuccino_core import cli
    from cappuccino_core.broker.sim import SimBroker
    from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir, version_problems
    from cappuccino_core.ensemble.publish import sync
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
    assert cli.main(["status", "--config-dir", cfg.config_dir]) == 2  # critical
    assert "ENSEMBLE v2 IS BROKEN" in capsys.readouterr().out
    assert cli.main(["ensemble", "show", "--config-dir", cfg.config_dir]) == 1  # broken
    assert "BROKEN: ensemble v2" in capsys.readouterr().out
    # the cached copy is truncated too (hard links): the sync fetches the model again
    (cfg.state_dir / "trader.pid").unlink()  # (the sync would SIGHUP this test's process)
    result = sync(cfg, engine)
    assert result.version == 3 and late._trial_id in {m.trial_id for m in result.selection.members}
    assert not version_problems(current_dir(ensembles_dir(cfg)))
    assert optuna.trial.TrialState.COMPLETE == study.trials[-1].state


# --- one line, naming the cause, for every error -------------------------------------------------

def cappuccino(*args, env=None):
    """The installed `cappuccino` script, as an operator runs it (a CompletedProcess)."""
    import os
    import subprocess
    import sys
    exe = os.path.join(os.path.dirname(sys.executable), "cappuccino")
    return subprocess.run([exe, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def one_line(result, code: int, *fragments: str) -> None:
    err = result.stderr.strip()
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, (f, err)


def test_bad_files_and_values_get_one_line_and_exit_2(tmp_path):
    from conftest import write_config
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "cappuccino.yaml").write_bytes("data:\n  start: 2022-01-01\n".encode("utf-16"))
    one_line(cappuccino("config", "check", "--config-dir", str(etc)), 2, "not UTF-8")
    (etc / "cappuccino.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    one_line(cappuccino("config", "check", "--config-dir", str(etc)), 2, "cappuccino.yaml")
    (etc / "cappuccino.yaml").write_text("data:\n  start: 2023-13-45\n")
    one_line(cappuccino("config", "check", "--config-dir", str(etc)), 2,
             "data.start: expected a date like 2023-01-01")
    for text, key in [("ensemble:\n  min_value: .nan\n", "ensemble.min_value: expected a finite"),
                      ("broker:\n  initial_cash: .inf\n", "broker.initial_cash: expected a finite"),
                      ("risk:\n  intrabar_check_s: .inf\n", "risk.intrabar_check_s"),
                      ("training:\n  n_envs: 100000000000000000000000\n", "training.n_envs"),
                      ("ensemble:\n  top_n: 4\nensemble:\n  top_n: 5\n", "'ensemble' appears twice")]:
        (etc / "cappuccino.yaml").write_text(text)
        one_line(cappuccino("config", "check", "--config-dir", str(etc)), 2, key)
    write_config(etc, {"paths": {"state_dir": str(tmp_path / "state")}})
    result = cappuccino("train", "--n-trials", "-5", "--config-dir", str(etc))
    assert result.returncode == 2 and "expected an integer from 1 to" in result.stderr
    one_line(cappuccino("train", "--study", "../../escape", "--n-trials", "1",
                        "--config-dir", str(etc)), 2, "--study", "a study name of letters")
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()


def test_storage_down_or_missing_is_one_line_everywhere(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import write_config
    etc = write_config(tmp_path / "etc", {
        "storage": {"url": "postgresql://nobody@127.0.0.1:1/nowhere"},
        "paths": {"state_dir": str(tmp_path / "state")}}, active_study="s")
    for args in (["study", "list"], ["ensemble", "sync"], ["trader", "status"], ["deploy"],
                 ["status"], ["paper", "--replay"]):
        result = cappuccino(*args, "--config-dir", str(etc))
        if args == ["status"]:  # status shows every section it can, and says why not the rest
            assert result.returncode == 2 and "storage unreachable" in result.stdout
            continue
        one_line(result, 1, "storage unreachable (postgresql://nobody@127.0.0.1:1/nowhere)")
    debug = cappuccino("--debug", "study", "list", "--config-dir", str(etc))
    assert "Traceback" in debug.stderr  # the traceback is there when asked for
    daemon = subprocess.run([sys.executable, "-m", "daemons.ensemble_sync", "--config-dir",
                             str(etc)], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert daemon.returncode == 1 and "Traceback" not in daemon.stderr
    assert "storage unreachable" in daemon.stderr
    (etc / "cappuccino.yaml").write_text("risk:\n  trailing_stop_pct: 10\n")
    daemon = subprocess.run([sys.executable, "-m", "daemons.paper_trader", "--config-dir",
                             str(etc)], capture_output=True, text=True)
    assert daemon.returncode == 2 and "risk.trailing_stop_pct" in daemon.stderr


def test_a_wrong_storage_setting_is_exit_2_naming_the_url_masked(tmp_path, pg_url):
    """A database or role that does not exist, a port no server can have: the setting is
    wrong, not the server down: exit 2, the URL named with its password masked."""
    from conftest import write_config
    host = pg_url.rpartition("@")[2].partition("/")[0]
    cases = [(f"postgresql://postgres:hunter2@{host}/no_such_db_here", 2, "does not exist"),
             (f"postgresql://no_such_role:hunter2@{host}/postgres", 2, "does not exist"),
             ("postgresql://postgres:hunter2@127.0.0.1:70000/x", 2, "storage.url")]
    for url, code, said in cases:
        etc = write_config(tmp_path / "etc", {"storage": {"url": url},
                                              "paths": {"state_dir": str(tmp_path / "state")}})
        (etc / "cappuccino.yaml").chmod(0o640)  # it holds a password
        result = cappuccino("study", "list", "--config-dir", str(etc))
        one_line(result, code, said)
        assert "hunter2" not in result.stderr, result.stderr
        if said != "storage.url":
            assert url.replace("hunter2", "***") in result.stderr, result.stderr


def test_a_bad_artifact_and_a_bad_csv_date_are_one_line(tmp_path, shared_data):
    cfg, engine, study = setup_trader_env(tmp_path, shared_data)
    trial = study.trials[-1]
    shutil.rmtree(cfg.artifact_cache_dir)  # a host that has not fetched it yet
    with open(stored_file(cfg, trial), "r+b") as f:  # the archive, in the artifact store
        f.truncate(50)
    one_line(cappuccino("backtest", "--trial", str(trial._trial_id), "--config-dir",
                        cfg.config_dir), 1, "checksum")
    src = tmp_path / "csv"
    src.mkdir()
    rows = "\n".join(f"2024-01-01 {h:02d}:00:00,1,2,0.5,1.5,10" for h in range(4))
    for base in ("BTC", "ETH", "SOL"):
        (src / f"{base}USDT_1h.csv").write_text(f"date,open,high,low,close,volume\n{rows}\n"
                                                "2024-13-45 04:00:00,1,2,0.5,1.5,10\n"
                                                "2024-01-01 05:00:00,1,2,0.5,1.5,10\n")
    one_line(cappuccino("data", "fetch", "--source", "csv", "--path", str(src), "--start",
                        "2024-01-01", "--end", "2024-01-02", "--config-dir", cfg.config_dir),
             1, "data error", "2024-13-45")


def test_long_gaps_are_refused_and_short_ones_counted(caplog):
    from cappuccino_core.data.bars import DataError, align
    idx = pd.date_range("2024-01-01", periods=100, freq="1h", tz="UTC")
    full = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1.0},
                        index=idx)
    holed = full.drop(idx[10:40])  # 30 bars missing in a row
    with pytest.raises(DataError, match=r"ETH/USD 2024-01-01 10:00:00\+00:00: 30 bars missing"):
        align({"BTC/USD": full, "ETH/USD": holed}, ["BTC/USD", "ETH/USD"], 3600, 24)
    caplog.set_level(logging.INFO)
    bars = align({"BTC/USD": full, "ETH/USD": full.drop(idx[10:13])}, ["BTC/USD", "ETH/USD"],
                 3600, 24)
    assert bars.filled[:, 1].sum() == 3
    assert "ETH/USD: 3 missing bars filled flat" in caplog.text


def test_secrets_in_a_world_readable_file_are_warned_and_install_protects_them(tmp_path, caplog):
    import os
    import stat

    from cappuccino_core.common.config import load_config
    from cappuccino_core.operations.install import install
    (tmp_path / "cappuccino.yaml").write_text("storage:\n  url: postgresql://u:hunter2@db/x\n")
    os.chmod(tmp_path / "cappuccino.yaml", 0o644)
    caplog.set_level(logging.WARNING)
    load_config(tmp_path)
    assert "readable by every user" in caplog.text and "hunter2" not in caplog.text
    root = tmp_path / "root"
    install("/opt/cappuccino", str(root), venv=False, user=False, systemd_reload=False,
            log=lambda line: None)
    mode = stat.S_IMODE((root / "etc/cappuccino/cappuccino.yaml").stat().st_mode)
    assert mode == 0o640


def test_importing_from_a_file_that_does_not_exist_creates_nothing(tmp_path):
    from conftest import write_config
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")}})
    missing = tmp_path / "nonexistent" / "x.db"
    one_line(cappuccino("study", "import", "--from", f"sqlite:///{missing}", "--config-dir",
                        str(etc)), 2, "--from", "no such SQLite file")
    assert not missing.parent.exists()


def test_a_sync_starts_by_removing_what_killed_syncs_left(tmp_path, shared_data):
    from cappuccino_core.ensemble.manifest import ensembles_dir
    from cappuccino_core.ensemble.publish import sync
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    root = ensembles_dir(cfg)
    (root / ".tmp-v000009-4242" / "members").mkdir(parents=True)
    (root / ".current-4242").symlink_to("v000009")
    assert sync(cfg, engine).status == "unchanged"  # nothing to publish, still cleaned
    assert not list(root.glob(".tmp-*")) and not list(root.glob(".current-*"))


def test_a_trader_started_while_the_database_is_down_waits_for_it(tmp_path, shared_data):
    """A database still booting (or an outage) at start-up is waited for, said once, and the
    trader comes up when it answers: no crash, so no start limit burnt on it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_config
    from private_postgres import PrivatePostgres
    pg = PrivatePostgres()
    try:
        etc = write_config(tmp_path / "etc", {
            "storage": {"url": pg.url}, "paths": {"state_dir": str(tmp_path / "state")},
            "data": {"csv_path": str(shared_data), "symbols": SYMBOLS}})
        log = tmp_path / "trader.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "daemons.paper_trader",
                                     "--config-dir", str(etc)], stdout=out,
                                    stderr=subprocess.STDOUT,
                                    env={k: v for k, v in os.environ.items()
                                         if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")})
        try:
            deadline = time.monotonic() + 30
            while "waiting for the storage" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            pg.start()  # the database comes up
            deadline = time.monotonic() + 60
            while "ready:" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        text = log.read_text()
        assert code == 0 and text.count("waiting for the storage") == 1, text
        assert "Traceback" not in text
    finally:
        pg.remove()
