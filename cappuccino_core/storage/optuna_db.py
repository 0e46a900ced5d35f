"""Every read of Optuna's own tables, and the names of the attributes we keep there.

Optuna's RDB schema is private to Optuna. We read it directly, read-only, where its public API
is too slow (`Study.get_trials()` loads every trial: seconds at 10,000 trials) or needs a study
object we do not have. Every such query lives here, behind a named finder, so that an Optuna
upgrade that changes the schema breaks one module, and `check_schema` refuses a storage whose
schema version this release has not been tested on instead of misreading it.

Writes always go through Optuna's API (`set_user_attr`, `tell`, ...), never through SQL.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..common.errors import USAGE, CappuccinoError

# --- the attribute keys, both sides (writers and readers) use these -------------------------

# trial user attributes
ATTR_ARTIFACT_DIR = "artifact_dir"  # earlier releases: the trial's model on local disk
ATTR_ARTIFACT_ID = "artifact_id"    # the trial's model in the artifact store (artifact_store.py)
ATTR_SHA256 = "sha256"              # checksum of the model's weights
ATTR_SPLITS = "splits"              # per-split CV results, a list of dicts
ATTR_SEED = "seed"                  # written once every parameter is drawn
ATTR_RETRY_OF = "retry_of"          # trial id a re-queued trial repeats
ATTR_POLICY = "policy"              # how much its target weights move (see objective.py)

# study user attributes
STUDY_TARGET = "n_trials_target"    # finished trials at which every worker stops
STUDY_TRAIN_END = "train_end"       # start of the held-out window, fixed on the first start
STUDY_HELDOUT_DAYS = "heldout_days"
STUDY_SYMBOLS = "symbols"

# Optuna's schema versions (alembic revisions) this release reads; Optuna 3.2 .. 5.0 share it.
KNOWN_SCHEMA_REVISIONS = {"v3.2.0.a"}
FINISHED_STATES = ("COMPLETE", "PRUNED")
STATES = ("COMPLETE", "RUNNING", "FAIL", "PRUNED", "WAITING")


# Optuna's tables (optuna/storages/_rdb/models.py) and its migration record
OPTUNA_TABLES = frozenset({
    "studies", "study_directions", "study_user_attributes", "study_system_attributes",
    "trials", "trial_user_attributes", "trial_system_attributes", "trial_params",
    "trial_values", "trial_intermediate_values", "trial_heartbeats", "version_info",
    "alembic_version"})


class OptunaSchemaError(CappuccinoError):
    """The storage's Optuna schema is one this release was not tested against."""
    exit_code = USAGE
    label = "storage error"
    whole_message = True


def trial_id(trial) -> int:
    """The storage-wide id of an Optuna trial (numbers repeat across studies; ids do not).
    Optuna keeps it private; this is the one place that reads it."""
    return trial._trial_id


def has_optuna_tables(engine: Engine) -> bool:
    return sa.inspect(engine).has_table("studies")


def check_schema(engine: Engine) -> str | None:
    """Raise OptunaSchemaError for an unknown Optuna schema revision; None for a database Optuna
    has not initialised yet, else the revision."""
    insp = sa.inspect(engine)
    if not insp.has_table("alembic_version"):
        return None
    with engine.connect() as conn:
        revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    if revision not in KNOWN_SCHEMA_REVISIONS:
        raise OptunaSchemaError(
            f"the storage's Optuna schema is revision {revision!r}; this release reads "
            f"{', '.join(sorted(KNOWN_SCHEMA_REVISIONS))} (Optuna 3.2 to 5.x): use a matching "
            "Optuna, or upgrade cappuccino")
    return revision


def _json(value: str | None) -> Any:
    return None if value is None else json.loads(value)


# --- studies ---------------------------------------------------------------------------------

def study_exists(conn: Connection | Engine, name: str) -> bool:
    with _connection(conn) as c:
        if not sa.inspect(c).has_table("studies"):
            return False
        return c.execute(sa.text("SELECT 1 FROM studies WHERE study_name = :n"),
                         {"n": name}).first() is not None


def study_summaries(engine: Engine) -> dict[str, dict]:
    """Per study: trial counts per state (`counts`) and the best COMPLETE value (`best`)."""
    q = sa.text("""
        SELECT s.study_name, t.state, count(t.trial_id), max(v.value)
        FROM studies s
        LEFT JOIN trials t ON t.study_id = s.study_id
        LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
        GROUP BY s.study_name, t.state""")
    out: dict[str, dict] = {}
    if not has_optuna_tables(engine):
        return out  # no study was ever created in this database
    with engine.connect() as conn:
        for name, state, count, best in conn.execute(q):
            row = out.setdefault(name, {"counts": {s: 0 for s in STATES}, "best": None})
            if state is not None:
                row["counts"][state] = count
            if state == "COMPLETE":
                row["best"] = best
    return out


def study_attr(engine: Engine, study: str, key: str) -> Any:
    """One user attribute of a study, or None."""
    q = sa.text("SELECT a.value_json FROM study_user_attributes a JOIN studies s "
                "ON s.study_id = a.study_id WHERE s.study_name = :s AND a.key = :k")
    with engine.connect() as conn:
        return _json(conn.execute(q, {"s": study, "k": key}).scalar())


def trial_count(engine: Engine, study: str, states: tuple[str, ...]) -> int:
    q = sa.text("SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :s AND t.state IN :states").bindparams(
        sa.bindparam("states", expanding=True))
    with engine.connect() as conn:
        return int(conn.execute(q, {"s": study, "states": list(states)}).scalar())


def completed_since(engine: Engine, study: str, since: datetime) -> int:
    """COMPLETE trials of `study` finished at or after `since` (naive UTC, as Optuna stores)."""
    q = sa.text("SELECT count(*) FROM trials t JOIN studies s ON s.study_id = t.study_id "
                "WHERE s.study_name = :s AND t.state = 'COMPLETE' "
                "AND t.datetime_complete >= :since")
    with engine.connect() as conn:
        return int(conn.execute(q, {"s": study, "since": since}).scalar())


def training_progress(engine: Engine, study: str) -> dict:
    """Running and finished counts, the last completion and start (naive UTC), the target."""
    q = sa.text("""SELECT
        sum(CASE WHEN t.state = 'RUNNING' THEN 1 ELSE 0 END),
        sum(CASE WHEN t.state IN :finished THEN 1 ELSE 0 END),
        max(t.datetime_complete), max(t.datetime_start)
        FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :s"""
                ).bindparams(sa.bindparam("finished", expanding=True))
    with engine.connect() as conn:
        running, finished, last_done, last_start = conn.execute(
            q, {"s": study, "finished": list(FINISHED_STATES)}).one()
    return {"running": running or 0, "finished": finished or 0, "last_complete": last_done,
            "last_start": last_start, "target": study_attr(engine, study, STUDY_TARGET)}


# --- trials ----------------------------------------------------------------------------------

_RANKED = sa.text("""
    SELECT t.trial_id, t.number, v.value, t.datetime_complete
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
    WHERE s.study_name = :study AND t.state = 'COMPLETE'
      AND (:min_value IS NULL OR v.value >= :min_value)
    ORDER BY v.value DESC, t.trial_id
    LIMIT :limit OFFSET :offset
""")


def ranked_trials(conn: Connection, study: str, min_value: float | None, limit: int,
                  offset: int) -> list:
    """COMPLETE trials of `study`, best value first: rows (trial_id, number, value,
    datetime_complete). One indexed query; pages with `limit`/`offset`."""
    return conn.execute(_RANKED, {"study": study, "min_value": min_value, "limit": limit,
                                  "offset": offset}).all()


def complete_trial(conn: Connection, study: str, trial_id: int):
    """The row (trial_id, number, value, datetime_complete) of one COMPLETE trial, or None."""
    q = sa.text("""
        SELECT t.trial_id, t.number, v.value, t.datetime_complete
        FROM trials t
        JOIN studies s ON s.study_id = t.study_id
        JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
        WHERE s.study_name = :study AND t.trial_id = :trial_id AND t.state = 'COMPLETE'""")
    return conn.execute(q, {"study": study, "trial_id": trial_id}).first()


def trial_attrs(conn: Connection, trial_ids: list[int], keys: tuple[str, ...]) -> dict[int, dict]:
    """{trial id: {key: value}} for the given user attribute keys."""
    if not trial_ids:
        return {}
    q = sa.text("SELECT trial_id, key, value_json FROM trial_user_attributes "
                "WHERE key IN :keys AND trial_id IN :ids").bindparams(
        sa.bindparam("keys", expanding=True), sa.bindparam("ids", expanding=True))
    out: dict[int, dict] = {}
    for tid, key, value in conn.execute(q, {"keys": list(keys), "ids": list(trial_ids)}):
        out.setdefault(tid, {})[key] = _json(value)
    return out


def complete_trials_with_attr(engine: Engine, key: str) -> list[tuple[int, str, Any]]:
    """(trial id, study, value) of every COMPLETE trial, in any study, that has user attr `key`."""
    q = sa.text("SELECT a.trial_id, s.study_name, a.value_json FROM trial_user_attributes a "
                "JOIN trials t ON t.trial_id = a.trial_id JOIN studies s ON s.study_id = "
                "t.study_id WHERE a.key = :k AND t.state = 'COMPLETE' ORDER BY a.trial_id")
    with engine.connect() as conn:
        return [(int(t), s, _json(v)) for t, s, v in conn.execute(q, {"k": key})]


def complete_values(engine: Engine, study: str) -> list[tuple[int, float]]:
    """(number, value) of every COMPLETE trial of `study`, by number."""
    q = sa.text("SELECT t.number, v.value FROM trials t JOIN studies s ON s.study_id = t.study_id"
                " JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                "WHERE s.study_name = :s AND t.state = 'COMPLETE' ORDER BY t.number")
    with engine.connect() as conn:
        return [(int(n), float(v)) for n, v in conn.execute(q, {"s": study})]


class _connection:
    """`with _connection(engine_or_conn) as conn`: a new connection, or the one given."""

    def __init__(self, target: Connection | Engine):
        self.target, self.opened = target, None

    def __enter__(self) -> Connection:
        if isinstance(self.target, Engine):
            self.opened = self.target.connect()
            return self.opened
        return self.target

    def __exit__(self, *exc) -> None:
        if self.opened is not None:
            self.opened.close()
