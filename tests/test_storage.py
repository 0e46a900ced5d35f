"""Storage on both backends: SQLite (embedded default) and real PostgreSQL."""

import multiprocessing as mp

import optuna
import pytest
import sqlalchemy as sa

from cappuccino_core.storage import database as storage


def test_optuna_storage_round_trip(storage_url):
    st = storage.make_optuna_storage(storage_url)
    study = optuna.create_study(study_name="s", storage=st, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(study_name="s", storage=storage.make_optuna_storage(storage_url))
    assert len(again.trials) == 3
    assert again.best_value == max(t.value for t in study.trials)


def test_engine_options_per_backend():
    assert storage.engine_kwargs("sqlite:///x.db", sqlite_busy_timeout_s=7) == {
        "connect_args": {"timeout": 7}, "json_serializer": storage._json}
    pg = storage.engine_kwargs("postgresql://h/db", pool_size=3, max_overflow=1)
    assert pg == {"pool_pre_ping": True, "pool_size": 3, "max_overflow": 1,
                  "json_serializer": storage._json}


def test_app_tables_created_idempotently_beside_optuna(storage_url):
    storage.make_optuna_storage(storage_url)  # Optuna's tables first, as a trainer would
    engine = storage.open_app_db(storage_url)
    assert storage.schema_version(engine) == storage.SCHEMA_VERSION
    storage.record_event(engine, "test", "info", "hello", "first")
    engine2 = storage.open_app_db(storage_url)  # a second start changes nothing
    assert storage.schema_version(engine2) == storage.SCHEMA_VERSION
    names = set(sa.inspect(engine2).get_table_names())
    assert {t.name for t in storage.metadata.sorted_tables} <= names
    assert {"studies", "trials"} <= names  # Optuna's, untouched
    with engine2.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(storage.events)).scalar() == 1


def test_upgrade_from_older_schema_keeps_rows(storage_url):
    engine = storage.make_engine(storage_url)
    assert storage.migrate(engine, target=1) == 1  # what release 0.1 created
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO cappuccino_events (ts, source, level, kind, message) "
                             "VALUES (CURRENT_TIMESTAMP, 'old', 'info', 'k', 'kept')"))
        conn.execute(storage.orders.insert().values(
            client_order_id="cap-1", trader="t", symbol="BTC/USD", side="buy", qty=0.5,
            reason="rebalance", status="filled"))
        conn.execute(sa.text("INSERT INTO cappuccino_fills (client_order_id, symbol, side, qty, "
                             "price, fee, ts) VALUES ('cap-1', 'BTC/USD', 'buy', 0.5, 100, 0.1, "
                             "CURRENT_TIMESTAMP)"))
        # release 0.1 kept the simulated broker's book in trader_state, under a fake trader
        conn.execute(storage.trader_state.insert().values(
            trader="sim-broker", key="book", value={"cash": 1234.5, "positions": {
                "BTC/USD": {"qty": 0.25, "avg": 30000.0}}}, updated_at=storage._now()))
    assert "incident_key" not in {c["name"] for c in sa.inspect(engine).get_columns("cappuccino_events")}

    upgraded = storage.open_app_db(storage_url)  # a newer release starts on the old database
    assert storage.schema_version(upgraded) == storage.SCHEMA_VERSION == 7
    with upgraded.connect() as conn:
        row = conn.execute(sa.select(storage.events)).one()
        assert row.message == "kept" and row.incident_key is None
        assert conn.execute(sa.select(storage.orders.c.qty)).scalar() == 0.5
        # a fill from before buy fees were taken in the asset: fee_qty 0
        assert conn.execute(sa.select(storage.fills.c.fee_qty)).scalar() == 0.0
        # and its fee as the account measured it, paid at the fill
        old = conn.execute(sa.select(storage.fills.c.fee_basis, storage.fills.c.fee_deferred,
                                     storage.fills.c.booked_bar)).one()
        assert tuple(old) == ("measured", False, None)
        # the book moved into its own table, as the account of the trader 'paper'
        account = conn.execute(sa.select(storage.sim_accounts)).one()
        assert (account.account, account.cash) == ("paper", 1234.5)
        assert account.positions == {"BTC/USD": {"qty": 0.25, "avg": 30000.0}}
        assert not conn.execute(sa.select(storage.trader_state)).first()
    from cappuccino_core.broker.sim import SimBroker
    assert SimBroker(upgraded, 0, 0, 0).positions()["BTC/USD"].qty == 0.25
    storage.record_event(upgraded, "new", "warning", "k", "with key", incident_key="drawdown")


def _migrate_in_child(url):
    storage.open_app_db(url)


def test_concurrent_first_starts_do_not_collide(storage_url):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_migrate_in_child, args=(storage_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    engine = storage.make_engine(storage_url)
    with engine.connect() as conn:
        versions = conn.execute(sa.select(storage.schema.c.version)).scalars().all()
    assert sorted(versions) == list(range(1, storage.SCHEMA_VERSION + 1))


def test_someone_elses_database_is_refused_before_a_table_is_written(storage_url, tmp_path,
                                                                      capsys):
    """Another application's database that happens to be reachable (even with tables named
    like Optuna's): nothing is created in it, and the command says why in one line."""
    from cappuccino_core import cli
    from conftest import write_config
    engine = sa.create_engine(storage.driver_url(storage_url))
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE customers (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE trials (id INTEGER PRIMARY KEY)"))
    before = set(sa.inspect(engine).get_table_names())
    with pytest.raises(storage.ForeignDatabase, match="customers"):
        storage.open_app_db(storage_url)
    with pytest.raises(storage.ForeignDatabase):
        storage.make_optuna_storage(storage_url)
    d = write_config(tmp_path / "etc", {"storage": {"url": storage_url}}, active_study="s")
    assert cli.main(["ensemble", "sync", "--config-dir", str(d)]) == 2
    assert "neither Optuna's nor Cappuccino's (customers)" in capsys.readouterr().err
    assert set(sa.inspect(engine).get_table_names()) == before
    engine.dispose()
    # an empty database is fine
    fresh = f"sqlite:///{tmp_path / 'empty.db'}"
    sa.create_engine(fresh).connect().close()
    assert storage.schema_version(storage.open_app_db(fresh)) == storage.SCHEMA_VERSION


def _read_only_mount_works() -> bool:
    import subprocess
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(),
                    reason="needs `unshare -m` (root) to mount a directory read-only")
def test_read_only_commands_work_on_a_sqlite_file_that_cannot_be_written(tmp_path):
    """A SQLite database in a directory mounted read-only (a backup, an operator without
    write access): the read-only commands answer as they do on a writable copy, never
    "attempt to write a readonly database" or "unable to open database file"."""
    import subprocess
    import sys

    import pandas as pd

    from conftest import write_config
    from cappuccino_core.trading.journal import Journal
    db = tmp_path / "ro" / "db.sqlite"
    db.parent.mkdir()
    etc = write_config(tmp_path / "etc", {"storage": {"url": f"sqlite:///{db}"},
                                          "paths": {"state_dir": str(tmp_path / "state")}})
    engine = storage.open_app_db(f"sqlite:///{db}")
    Journal(engine, "paper").snapshot(pd.Timestamp("2024-01-01", tz="UTC"), 1000.0, 1000.0, {})
    engine.dispose()
    commands = [["status"], ["study", "list"], ["trader", "status"], ["trader", "history"]]

    def run(cmd, read_only):
        line = [sys.executable, "-m", "cappuccino_core.cli", *cmd, "--config-dir", str(etc)]
        if read_only:
            d = db.parent
            line = ["unshare", "-m", "sh", "-c", f"mount --bind {d} {d} && mount -o "
                    f"remount,ro,bind {d} && exec \"$0\" \"$@\"", *line]
        return subprocess.run(line, capture_output=True, text=True, timeout=120)
    for cmd in commands:
        writable, read_only = run(cmd, False), run(cmd, True)
        said = read_only.stdout + read_only.stderr
        assert read_only.returncode == writable.returncode, (cmd, said)
        assert "readonly" not in said and "unable to open" not in said, (cmd, said)
