"""Storage: one URL gives both the Optuna storage and the application's own tables.

`app_engine(cfg)` and `optuna_storage(cfg)` are the one place engines and storages are built
from the configuration (pool size, SQLite busy timeout, heartbeats); both refuse an Optuna
schema this release does not know (`optuna_db.check_schema`).

PostgreSQL is the shared, scale-out backend; a SQLite file is the embedded default. The app's
tables live in the same database as Optuna's, prefixed `cappuccino_`, and are created and
upgraded by numbered migrations. The applied version is recorded in `cappuccino_schema`; a newer
release starting on an older database applies the missing migrations and keeps every row.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import numpy as np
import optuna
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..common.errors import USAGE, CappuccinoError, urls_in_use

log = logging.getLogger(__name__)


def _quiet_heartbeat_warnings() -> None:
    """Heartbeats have been "experimental" in Optuna for years; they are what we rely on."""
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                            message=".*(heartbeat_interval|RetryHeartbeatStaleTrialCallback).*")


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def driver_url(url: str) -> str:
    """`postgresql://` names the psycopg2 driver explicitly (SQLAlchemy 2.1 would pick psycopg 3)."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def _plain(value):
    """A numpy scalar or array as the Python number or list it holds (for JSON columns)."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _json(value) -> str:
    return json.dumps(value, default=_plain)


def _numbers_cross_as_numbers() -> None:
    """numpy scalars reach both drivers as the plain numbers they hold, registered once for the
    process. psycopg2 renders a float subclass with repr(), which under numpy 2 is
    `np.float64(0.5)` (PostgreSQL: schema "np" does not exist); sqlite3 refuses numpy integers."""
    import sqlite3

    from psycopg2.extensions import adapt, register_adapter
    for kind, plain in ((np.floating, float), (np.integer, int), (np.bool_, bool)):
        for t in {kind} | set(np.sctypeDict.values()):
            if isinstance(t, type) and issubclass(t, kind):
                register_adapter(t, lambda x, plain=plain: adapt(plain(x)))
                sqlite3.register_adapter(t, plain)


_numbers_cross_as_numbers()


def engine_kwargs(url: str, pool_size: int = 5, max_overflow: int = 10,
                  sqlite_busy_timeout_s: float = 30.0) -> dict:
    """SQLAlchemy engine options per backend: a busy timeout for SQLite (several processes share
    the file), a checked pool for PostgreSQL (connections die across server restarts); JSON
    columns take numpy numbers as plain ones."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": sqlite_busy_timeout_s}, "json_serializer": _json}
    return {"pool_pre_ping": True, "pool_size": pool_size, "max_overflow": max_overflow,
            "json_serializer": _json}


def _ensure_sqlite_dir(url: str) -> None:
    if is_sqlite(url) and url.startswith("sqlite:///") and ":memory:" not in url:
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


class ForeignDatabase(CappuccinoError):
    """A database holding another application's tables: never written to."""
    exit_code = USAGE
    label = "storage error"
    whole_message = True


def refuse_foreign(url: str) -> None:
    """Before anything is written: a database whose tables are neither Optuna's nor ours is
    someone else's (an empty one is fine), and is refused without a table created in it."""
    from ..common.config import mask_text
    from .optuna_db import OPTUNA_TABLES
    _in_use(url)
    if is_sqlite(url) and not Path(url.removeprefix("sqlite:///")).exists():
        return  # a new file: nothing there to protect
    engine = _read_only_sqlite(url, 30.0) if is_sqlite(url) else sa.create_engine(driver_url(url))
    try:
        names = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    foreign = sorted(names - OPTUNA_TABLES - set(metadata.tables))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                          else "")
        raise ForeignDatabase(f"{mask_text(url)} holds tables that are neither Optuna's nor "
                              f"Cappuccino's ({shown}): not written to; point storage.url at "
                              "an empty database or one of Cappuccino's")


def make_optuna_storage(url: str, *, pool_size: int = 5, max_overflow: int = 10,
                        sqlite_busy_timeout_s: float = 30.0, heartbeat_interval: int | None = None,
                        grace_period: int | None = None,
                        heartbeat_stale_trial_callback: Callable | None = None) -> optuna.storages.RDBStorage:
    """The Optuna storage for `url` (PostgreSQL or SQLite), with heartbeats when asked for.
    Optuna creates its tables here: someone else's database is refused first."""
    refuse_foreign(url)  # (names the URL in use for errors)
    _ensure_sqlite_dir(url)
    _quiet_heartbeat_warnings()
    return optuna.storages.RDBStorage(
        driver_url(url), engine_kwargs=engine_kwargs(url, pool_size, max_overflow, sqlite_busy_timeout_s),
        heartbeat_interval=heartbeat_interval, grace_period=grace_period,
        heartbeat_stale_trial_callback=heartbeat_stale_trial_callback)


def _in_use(url: str) -> None:
    if url in urls_in_use:
        urls_in_use.remove(url)
    urls_in_use.append(url)


def make_engine(url: str, create: bool = True, **kwargs) -> Engine:
    """An engine on `url`; `create=False` never makes a directory for a SQLite file."""
    _in_use(url)
    if create:
        _ensure_sqlite_dir(url)
    engine = sa.create_engine(driver_url(url), **engine_kwargs(url, **kwargs))
    if is_sqlite(url):
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    """WAL: readers never block the writer; synchronous=NORMAL: a commit survives a crash of
    the process (not always a power cut), at a fraction of the cost of an fsync per commit."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# --- the application's tables ----------------------------------------------------------------

metadata = sa.MetaData()


def _now() -> datetime:
    return datetime.now(timezone.utc)


schema = sa.Table(
    "cappuccino_schema", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False))

orders = sa.Table(
    "cappuccino_orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("client_order_id", sa.String(128), nullable=False, unique=True),
    sa.Column("trader", sa.String(64), nullable=False),
    sa.Column("bar_time", sa.DateTime(timezone=True)),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float),
    sa.Column("notional", sa.Float),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("broker_order_id", sa.String(64)),
    sa.Column("filled_qty", sa.Float, nullable=False, default=0.0),
    sa.Column("filled_avg_price", sa.Float),
    sa.Column("fee", sa.Float, nullable=False, default=0.0),
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, default=_now))

fills = sa.Table(
    "cappuccino_fills", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("client_order_id", sa.String(128), nullable=False, index=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float, nullable=False),
    sa.Column("price", sa.Float, nullable=False),
    sa.Column("fee", sa.Float, nullable=False),  # in USD (a buy's: the asset fee at its price)
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, default=_now),
    # A buy's fee as taken from the asset received: the position grows by qty - fee_qty.
    sa.Column("fee_qty", sa.Float, nullable=False, default=0.0, server_default="0",
              info={"since": 5}),
    # measured (the account moved by it at the fill) | estimated (the configured rate: the
    # account said nothing believable) | booked (the broker's fee booking, Alpaca's CFEE)
    sa.Column("fee_basis", sa.String(16), nullable=False, default="measured",
              server_default="measured", info={"since": 7}),
    # the account had not paid the fee at the fill: the broker posts it later
    sa.Column("fee_deferred", sa.Boolean, nullable=False, default=False,
              server_default=sa.false(), info={"since": 7}),
    # the bar whose decision first saw the booking (the account paid it before that decision)
    sa.Column("booked_bar", sa.DateTime(timezone=True), info={"since": 7}))

# The broker's fee bookings as read (Alpaca's CFEE activities): each is read once, and says
# which fills it was put on (none: a booking the journal has no fill for).
fee_bookings = sa.Table(
    "cappuccino_fee_bookings", metadata,
    sa.Column("trader", sa.String(64), primary_key=True),
    sa.Column("activity_id", sa.String(128), primary_key=True),
    sa.Column("date", sa.String(10), nullable=False),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float, nullable=False),
    sa.Column("usd", sa.Float, nullable=False),
    sa.Column("fills", sa.Integer, nullable=False),  # how many fills it was put on
    sa.Column("seen_bar", sa.DateTime(timezone=True)),
    sa.Column("read_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    info={"since": 7})

trader_state = sa.Table(
    "cappuccino_trader_state", metadata,
    sa.Column("trader", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, default=_now))

equity_snapshots = sa.Table(
    "cappuccino_equity_snapshots", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("trader", sa.String(64), nullable=False),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
    sa.Column("equity", sa.Float, nullable=False),
    sa.Column("cash", sa.Float, nullable=False),
    sa.Column("positions", sa.JSON, nullable=False))

ensemble_versions = sa.Table(
    "cappuccino_ensemble_versions", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("study", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("manifest", sa.JSON, nullable=False))

deploy_decisions = sa.Table(
    "cappuccino_deploy_decisions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("study", sa.String(128), nullable=False),
    sa.Column("candidate_trial_id", sa.Integer),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("promoted", sa.Boolean, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False))

events = sa.Table(
    "cappuccino_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, default=_now),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", sa.JSON),
    # Groups the events of one incident (alert once per incident).
    sa.Column("incident_key", sa.String(128), info={"since": 2}))


sim_orders = sa.Table(
    "cappuccino_sim_orders", metadata,
    sa.Column("client_order_id", sa.String(128), primary_key=True),
    sa.Column("symbol", sa.String(32), nullable=False),
    sa.Column("side", sa.String(8), nullable=False),
    sa.Column("qty", sa.Float, nullable=False),
    sa.Column("filled_qty", sa.Float, nullable=False),
    sa.Column("price", sa.Float),
    sa.Column("fee", sa.Float, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("ts", sa.DateTime(timezone=True), nullable=False, default=_now),
    info={"since": 3})


decisions = sa.Table(
    "cappuccino_decisions", metadata,
    sa.Column("trader", sa.String(64), primary_key=True),
    sa.Column("bar_time", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("target", sa.JSON, nullable=False),     # symbol -> weight, and "cash"
    sa.Column("prices", sa.JSON, nullable=False),     # symbol -> price the plan used
    sa.Column("quiet", sa.JSON, nullable=False),      # symbols flat-filled on this bar
    sa.Column("ensemble", sa.Integer),
    sa.Column("band", sa.Float, nullable=False),      # the no-trade band the plan used
    # the account before the bar's orders (the broker's word), and the stops then
    sa.Column("cash", sa.Float, nullable=False),
    sa.Column("positions", sa.JSON, nullable=False),  # symbol -> units
    sa.Column("stops", sa.JSON, nullable=False),      # symbol -> {"entry", "peak"}
    sa.Column("cooldown", sa.JSON, nullable=False),   # symbol -> no buying before (ISO)
    info={"since": 5})

sim_accounts = sa.Table(
    "cappuccino_sim_accounts", metadata,
    sa.Column("account", sa.String(64), primary_key=True),
    sa.Column("cash", sa.Float, nullable=False),
    sa.Column("positions", sa.JSON, nullable=False),  # symbol -> {"qty", "avg"}
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    info={"since": 4})

# A trial's model, once its upload is complete and checksummed: what makes the trial eligible
# for an ensemble (artifact_store.py). One row per trial; a retry is a new trial.
trial_artifacts = sa.Table(
    "cappuccino_trial_artifacts", metadata,
    sa.Column("trial_id", sa.Integer, primary_key=True),
    sa.Column("study", sa.String(128), nullable=False),
    sa.Column("artifact_id", sa.String(64), nullable=False),
    sa.Column("store", sa.String(16), nullable=False),   # filesystem | s3 | database
    sa.Column("sha256", sa.String(64), nullable=False),  # of the archive as uploaded
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, default=_now),
    info={"since": 6})

# The `database` artifact store: each artifact as numbered chunks (PostgreSQL's bytea and
# the drivers handle a few MiB per value comfortably; a model is one to a few chunks).
artifact_chunks = sa.Table(
    "cappuccino_artifact_chunks", metadata,
    sa.Column("artifact_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    info={"since": 6})


# --- migrations: append only, never edit a released one ---------------------------------------

def _columns_of_release(table: sa.Table, release: int) -> list[sa.Column]:
    """Fresh copies of the columns that existed at schema `release` (info["since"], default 1)."""
    return [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                      unique=c.unique, index=c.index, autoincrement=c.autoincrement)
            for c in table.columns if c.info.get("since", 1) <= release]


def _migration_1(conn: Connection) -> None:
    """The first schema: every table as released in 0.1, without events.incident_key."""
    for table in metadata.sorted_tables:
        if table is not schema and table.info.get("since", 1) == 1:
            sa.Table(table.name, sa.MetaData(), *_columns_of_release(table, 1)).create(
                conn, checkfirst=True)


def _migration_2(conn: Connection) -> None:
    """events.incident_key, and the indexes the trader and the monitor query by."""
    conn.execute(sa.text("ALTER TABLE cappuccino_events ADD COLUMN incident_key VARCHAR(128)"))
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_cappuccino_events_incident "
                         "ON cappuccino_events (incident_key)"))
    conn.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_cappuccino_orders_trader_bar "
                         "ON cappuccino_orders (trader, bar_time)"))


def _migration_3(conn: Connection) -> None:
    """The simulated broker's order book."""
    sim_orders.create(conn, checkfirst=True)


def _migration_4(conn: Connection) -> None:
    """The simulated broker's accounts in a table of their own (the book moves out of
    trader_state, where it sat under a fake trader, into the account of the trader 'paper')."""
    sim_accounts.create(conn, checkfirst=True)
    old = conn.execute(sa.text("SELECT value FROM cappuccino_trader_state "
                               "WHERE trader = 'sim-broker' AND key = 'book'")).scalar()
    if old is not None:
        book = json.loads(old) if isinstance(old, str) else old
        conn.execute(sim_accounts.insert().values(account="paper", cash=book["cash"],
                                                  positions=book["positions"], updated_at=_now()))
        conn.execute(sa.text("DELETE FROM cappuccino_trader_state "
                             "WHERE trader = 'sim-broker' AND key = 'book'"))


def _migration_5(conn: Connection) -> None:
    """Buy fees in the asset (fills.fee_qty), and each bar's decision for `reconcile`."""
    conn.execute(sa.text("ALTER TABLE cappuccino_fills ADD COLUMN fee_qty FLOAT "
                         "NOT NULL DEFAULT 0"))
    decisions.create(conn, checkfirst=True)


def _migration_6(conn: Connection) -> None:
    """Trial models in an artifact store shared by every host, and the database store's chunks."""
    trial_artifacts.create(conn, checkfirst=True)
    artifact_chunks.create(conn, checkfirst=True)


def _migration_7(conn: Connection) -> None:
    """Fees as the broker books them: each fill's fee basis, whether the account paid it at
    the fill, the bar its booking was seen; the bookings read."""
    false = "false" if conn.dialect.name == "postgresql" else "0"
    for column in ("fee_basis VARCHAR(16) NOT NULL DEFAULT 'measured'",
                   f"fee_deferred BOOLEAN NOT NULL DEFAULT {false}",
                   "booked_bar TIMESTAMP WITH TIME ZONE" if conn.dialect.name == "postgresql"
                   else "booked_bar DATETIME"):
        conn.execute(sa.text(f"ALTER TABLE cappuccino_fills ADD COLUMN {column}"))
    fee_bookings.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3,
                                                  _migration_4, _migration_5, _migration_6,
                                                  _migration_7]
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(engine: Engine) -> int:
    """The highest applied migration, 0 for a database without the app's tables."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(schema.name):
            return 0
        return conn.execute(sa.select(sa.func.max(schema.c.version))).scalar() or 0


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine):
    """Serialises migrations of one SQLite file across processes (pysqlite runs DDL outside
    transactions, so the database's own lock cannot)."""
    db = engine.url.database
    if not db or db == ":memory:":
        yield
        return
    with open(f"{db}.migrate.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def migrate(engine: Engine, target: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations up to `target`, each in its own transaction, and return the
    version reached. Safe to run from several processes at once: on PostgreSQL an advisory lock
    serialises them, on SQLite a lock file beside the database."""
    lock = _sqlite_file_lock(engine) if engine.dialect.name == "sqlite" else contextlib.nullcontext()
    with lock:
        _migrate_locked(engine, target)
    return schema_version(engine)


def _migrate_locked(engine: Engine, target: int) -> None:
    if engine.dialect.name == "postgresql":  # two first starts must not both create the table
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(727001)"))
            schema.create(conn, checkfirst=True)
    else:
        schema.create(engine, checkfirst=True)
    for number in range(1, target + 1):
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727001)"))
            done = conn.execute(sa.select(schema.c.version).where(schema.c.version == number))
            if done.first():
                continue
            log.info("applying storage migration %d: %s", number,
                     (MIGRATIONS[number - 1].__doc__ or "").strip().splitlines()[0])
            MIGRATIONS[number - 1](conn)
            conn.execute(schema.insert().values(version=number, applied_at=_now()))


def open_app_db(url: str, **engine_options) -> Engine:
    """An engine on `url` with the app's tables created or upgraded to the current version."""
    from .optuna_db import check_schema
    refuse_foreign(url)
    engine = make_engine(url, **engine_options)
    check_schema(engine)
    migrate(engine)
    return engine


def _engine_options(cfg) -> dict:
    return {"pool_size": cfg.storage.pool_size, "max_overflow": cfg.storage.max_overflow,
            "sqlite_busy_timeout_s": cfg.storage.sqlite_busy_timeout_s}


def app_engine(cfg) -> Engine:
    """The configured database, the app's tables created or upgraded, Optuna's schema checked."""
    return open_app_db(cfg.storage_url, **_engine_options(cfg))


class StorageEmpty(CappuccinoError):
    """A read-only command found nothing to read: no database, or no tables of ours yet."""
    label = "storage"
    whole_message = True


def read_engine(cfg) -> Engine:
    """The configured database for a command that only reads (`status`, `study list`, `trader
    status`, `report`, ...): it never creates a file, a table or a migration, and says plainly
    (StorageEmpty) when there is nothing to read yet."""
    from .optuna_db import check_schema
    url = cfg.storage_url
    where = url.split("@")[-1]
    if is_sqlite(url) and not Path(url.removeprefix("sqlite:///")).exists():
        raise StorageEmpty(f"no database at {url.removeprefix('sqlite:///')} yet: nothing has "
                           "run with this configuration")
    refuse_foreign(url)  # someone else's database is not ours to read either
    engine = (_read_only_sqlite(url, cfg.storage.sqlite_busy_timeout_s) if is_sqlite(url)
              else make_engine(url, create=False, **_engine_options(cfg)))
    check_schema(engine)
    version = schema_version(engine)
    if version == 0:
        raise StorageEmpty(f"the database {where} has no Cappuccino tables yet: nothing has "
                           "run with this configuration")
    if version < SCHEMA_VERSION:
        raise StorageEmpty(f"the database {where} has schema v{version}, this release reads "
                           f"v{SCHEMA_VERSION}: start any Cappuccino service once to upgrade it")
    return engine


def _read_only_sqlite(url: str, busy_timeout_s: float) -> Engine:
    """A SQLite file opened so that nothing can be written (`mode=ro`): a read-only command
    works on a file it may not write. Where nothing can write at all (a read-only file or
    directory: SQLite could not even make the WAL's shared-memory file), `immutable=1`, which
    is then true."""
    path = url.removeprefix("sqlite:///")
    writable = os.access(path, os.W_OK) and os.access(Path(path).parent, os.W_OK)
    mode = "mode=ro" if writable else "immutable=1"
    return sa.create_engine(f"sqlite:///file:{quote(path)}?{mode}&uri=true",
                            connect_args={"timeout": busy_timeout_s}, json_serializer=_json)


def optuna_storage(cfg, heartbeats: bool = False) -> optuna.storages.RDBStorage:
    """The configured Optuna storage; with the trainers' heartbeats and retry of stale trials
    when `heartbeats`."""
    from .optuna_db import check_schema
    engine = make_engine(cfg.storage_url, **_engine_options(cfg))
    try:
        check_schema(engine)
    finally:
        engine.dispose()
    extra = {}
    _quiet_heartbeat_warnings()
    if heartbeats:
        t = cfg.training
        extra = dict(heartbeat_interval=t.heartbeat_interval_s, grace_period=t.heartbeat_grace_s,
                     heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                         max_retry=t.max_retry))
    return make_optuna_storage(cfg.storage_url, **_engine_options(cfg), **extra)


def record_event(engine: Engine, source: str, level: str, kind: str, message: str,
                 data: dict | None = None, incident_key: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(events.insert().values(source=source, level=level, kind=kind,
                                            message=message, data=data,
                                            incident_key=incident_key))


def find_events(engine: Engine, *, source: str | None = None, kind: str | None = None,
                incident_key: str | None = None, since: datetime | None = None,
                newest: int | None = None) -> list:
    """Events matching every filter given, newest first (at most `newest` of them)."""
    q = sa.select(events)
    for column, value in ((events.c.source, source), (events.c.kind, kind),
                          (events.c.incident_key, incident_key)):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(events.c.ts >= since)
    q = q.order_by(events.c.id.desc())
    with engine.connect() as conn:
        return conn.execute(q if newest is None else q.limit(newest)).all()
