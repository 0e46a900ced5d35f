"""Top-10 selection at scale on PostgreSQL: Cappuccino's indexed query vs Optuna's get_trials().

Populates a study of 100,000 COMPLETE trials (bulk SQL into Optuna's own schema, created by
Optuna), then times: our ranking query (the one `select_members` runs) at 100,000 trials, and
Optuna's `study.get_trials()` (what a naive selection would call) on a 10,000-trial study,
plus our query on that same study, and prints the ratio. Target: <= 100 ms at 100,000.

    python benchmarks/ensemble_select.py [--admin-url postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time
import uuid

import optuna
import psycopg2

from cappuccino_core.artifacts.store import records
from cappuccino_core.storage.optuna_db import ranked_trials
from cappuccino_core.storage.database import make_engine, make_optuna_storage, open_app_db


def populate(url: str, name: str, n: int) -> None:
    open_app_db(url).dispose()  # the app's tables, cappuccino_trial_artifacts among them
    storage = make_optuna_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # schema + one real trial
    conn = psycopg2.connect(url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT study_id FROM studies WHERE study_name = %s", (name,))
        study_id = cur.fetchone()[0]
        cur.execute("SELECT coalesce(max(trial_id), 0) FROM trials")
        first = cur.fetchone()[0] + 1
        ids = range(first, first + n)
        trials = io.StringIO("".join(
            f"{i}\t{k + 1}\t{study_id}\tCOMPLETE\t2024-01-01\t2024-01-01\n"
            for k, i in enumerate(ids)))
        cur.copy_expert("COPY trials (trial_id, number, study_id, state, datetime_start, "
                        "datetime_complete) FROM STDIN", trials)
        values = io.StringIO("".join(f"{i}\t0\t{(i * 7919 % 100003) / 1000.0}\tFINITE\n"
                                     for i in ids))
        cur.copy_expert("COPY trial_values (trial_id, objective, value, value_type) FROM STDIN",
                        values)
        attrs = io.StringIO("".join(
            f"{i}\tartifact_id\t{json.dumps(str(uuid.uuid4()))}\n"
            f"{i}\tsha256\t{json.dumps('0' * 64)}\n" for i in ids))
        cur.copy_expert("COPY trial_user_attributes (trial_id, key, value_json) FROM STDIN", attrs)
        uploads = io.StringIO("".join(f"{i}\t{name}\t{uuid.uuid4()}\tdatabase\t{'0' * 64}\t"
                                      f"150000\t2024-01-01\n" for i in ids))
        cur.copy_expert("COPY cappuccino_trial_artifacts (trial_id, study, artifact_id, store, "
                        "sha256, size, created_at) FROM STDIN", uploads)
        cur.execute("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                    "(SELECT max(trial_id) FROM trials))")
        cur.execute("ANALYZE")
    conn.close()


def time_query(engine, study: str, repeat: int = 20) -> float:
    times = []
    with engine.connect() as conn:
        for _ in range(repeat):
            t0 = time.perf_counter()
            rows = ranked_trials(conn, study, None, 30, 0)
            records(conn, [r[0] for r in rows])  # what select_members reads next
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--trials", type=int, default=100_000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    db = f"cappuccino_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(args.admin_url)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = f"{args.admin_url.rsplit('/', 1)[0]}/{db}"
    try:
        t0 = time.perf_counter()
        populate(url, "big", args.trials)
        populate(url, "small", 10_000)
        print(f"populated {args.trials:,} + 10,000 trials in {time.perf_counter() - t0:.0f} s")
        engine = make_engine(url)
        ours_big = time_query(engine, "big")
        ours_small = time_query(engine, "small")
        study = optuna.load_study(study_name="small", storage=make_optuna_storage(url))
        t0 = time.perf_counter()
        trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        sorted(trials, key=lambda t: t.value, reverse=True)[:10]
        optuna_small = time.perf_counter() - t0
        print(f"Cappuccino ranking query, {args.trials:>7,} trials: {ours_big * 1e3:8.1f} ms "
              f"(target <= 100 ms: {'met' if ours_big <= 0.1 else 'NOT met'})")
        print(f"Cappuccino ranking query,  10,000 trials: {ours_small * 1e3:8.1f} ms")
        print(f"Optuna get_trials() + sort, 10,000 trials: {optuna_small * 1e3:8.1f} ms")
        print(f"ratio at 10,000 trials: {optuna_small / ours_small:,.0f}x faster")
    finally:
        admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = %s AND pid <> pg_backend_pid()", (db,))
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.close()


if __name__ == "__main__":
    main()
