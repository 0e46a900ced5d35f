"""Many training workers on one PostgreSQL: does the ensemble's top-N query stay fast?

Simulates K workers (K = 4, 16, 64 processes) that complete trials against one PostgreSQL the
way `cappuccino-train@` does: ask Optuna for a trial and its parameters, report 15 split values
with their user attrs, "train" (sleep --train-s), upload a model-sized artifact to the
`database` artifact store, record it, tell Optuna the value. Meanwhile one reader runs the
ensemble sync's query (the ranked COMPLETE trials and their artifact records) in a loop.
Each worker's pool is one connection plus one overflow, as the README's recipe says (Optuna's
storage opens a second connection while checking its schema at start; with no overflow it
waits on itself for 30 s and fails); the reader also counts the database's connections.

Prints, per K: trials completed per second, p50/p99 latency of a trial's final write (the
artifact upload, its record and Optuna's tell), p99 of the top-N query, errors (lock timeouts,
deadlocks, serialisation failures, anything else). Target: at 64 workers, top-N <= 100 ms p99
and no errors.

    python benchmarks/cluster_load.py [--admin-url postgresql://postgres@127.0.0.1/postgres]
        [--workers 4 16 64] [--seconds 20] [--train-s 1.0]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import statistics
import time
import uuid

import optuna
import psycopg2
import sqlalchemy as sa

from cappuccino_core.artifacts.store import DatabaseArtifactStore, records
from cappuccino_core.storage.optuna_db import ranked_trials
from cappuccino_core.storage.database import make_optuna_storage, open_app_db, trial_artifacts

STUDY = "load"
MODEL_BYTES = 150_000  # a default 2x128 policy with its spec and events, as a tar


def worker(url: str, deadline: float, train_s: float, seed: int, out: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_optuna_storage(url, pool_size=1, max_overflow=1)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    store = DatabaseArtifactStore(storage.engine)  # the same one connection
    rng = random.Random(seed)
    writes, errors = [], []
    while time.time() < deadline:
        try:
            trial = study.ask()
            lr = trial.suggest_float("learning_rate", 1e-4, 1e-3, log=True)
            trial.suggest_int("hidden", 64, 256)
            for split in range(15):
                trial.report(rng.gauss(0, 1), split)
            trial.set_user_attr("splits", [{"excess_sharpe": rng.gauss(0, 1)}] * 15)
            for key in ("mean_excess_sharpe", "worst_excess_sharpe", "mean_max_drawdown",
                        "mean_turnover", "ppo_approx_kl", "ppo_explained_variance"):
                trial.set_user_attr(key, rng.random())
            time.sleep(train_s * rng.uniform(0.5, 1.5))
            t0 = time.perf_counter()
            artifact_id = str(uuid.uuid4())
            store.write(artifact_id, io.BytesIO(os.urandom(MODEL_BYTES)))
            with storage.engine.begin() as conn:
                conn.execute(trial_artifacts.insert().values(
                    trial_id=trial._trial_id, study=STUDY, artifact_id=artifact_id,
                    store="database", sha256="0" * 64, size=MODEL_BYTES))
            study.tell(trial, lr * rng.random())
            writes.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - every failure is counted and named
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
    out.put(("worker", writes, errors, 0))


def reader(url: str, deadline: float, out: mp.Queue) -> None:
    engine = open_app_db(url, pool_size=1, max_overflow=0)
    times, errors, peak = [], [], 0
    count = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
    while time.time() < deadline:
        t0 = time.perf_counter()
        try:
            with engine.connect() as conn:
                rows = ranked_trials(conn, STUDY, None, 30, 0)
                records(conn, [r[0] for r in rows])
                times.append(time.perf_counter() - t0)
                peak = max(peak, conn.execute(count).scalar())
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}")
        time.sleep(0.05)
    out.put(("reader", times, errors, peak))


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) >= 2 else float("nan")


def run(url: str, k: int, seconds: float, train_s: float) -> dict:
    ctx = mp.get_context("fork")  # children import nothing again; each opens its own engine
    out = ctx.Queue()
    deadline = time.time() + seconds
    procs = [ctx.Process(target=worker, args=(url, deadline, train_s, i, out)) for i in range(k)]
    procs.append(ctx.Process(target=reader, args=(url, deadline, out)))
    for p in procs:
        p.start()
    writes, reads, errors, peak = [], [], [], 0
    for _ in procs:
        kind, times, errs, connections = out.get(timeout=seconds + 300)
        (writes if kind == "worker" else reads).extend(times)
        errors += errs
        peak = max(peak, connections)
    for p in procs:
        p.join()
    return {"k": k, "completed": len(writes), "rate": len(writes) / seconds,
            "write_p50": pct(writes, 50), "write_p99": pct(writes, 99),
            "topn_p50": pct(reads, 50), "topn_p99": pct(reads, 99), "errors": errors,
            "connections": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--admin-url", default=os.environ.get(
        "CAPPUCCINO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--workers", type=int, nargs="+", default=[4, 16, 64])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--train-s", type=float, default=1.0, help="simulated training per trial")
    args = p.parse_args()

    name = f"cappuccino_load_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(args.admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
        cur.execute("SHOW max_connections")
        max_connections = cur.fetchone()[0]
    url = f"{args.admin_url.rsplit('/', 1)[0]}/{name}"
    try:
        open_app_db(url).dispose()
        optuna.create_study(study_name=STUDY, storage=make_optuna_storage(url),
                            direction="maximize")
        print(f"PostgreSQL max_connections {max_connections}; each worker: a pool of 1 + 1 overflow; "
              f"{args.seconds:.0f} s per row; a trial 'trains' {args.train_s:.1f} s (x0.5-1.5), "
              f"then uploads {MODEL_BYTES // 1000} kB to the database store; "
              f"{os.cpu_count()} cores\n")
        print(f"{'workers':>8}{'trials':>8}{'trials/s':>10}{'write p50':>11}{'write p99':>11}"
              f"{'top-N p50':>11}{'top-N p99':>11}{'errors':>8}{'connections':>13}")
        rows = []
        for k in args.workers:
            r = run(url, k, args.seconds, args.train_s)
            rows.append(r)
            print(f"{k:>8}{r['completed']:>8}{r['rate']:>10.1f}{1000 * r['write_p50']:>9.0f}ms"
                  f"{1000 * r['write_p99']:>9.0f}ms{1000 * r['topn_p50']:>9.1f}ms"
                  f"{1000 * r['topn_p99']:>9.1f}ms{len(r['errors']):>8}{r['connections']:>13}")
            for e in sorted(set(r["errors"]))[:5]:
                print(f"{'':>8}error: {e}")
        last = rows[-1]
        met = last["topn_p99"] <= 0.1 and not last["errors"]
        print(f"\ntarget at {last['k']} workers: top-N <= 100 ms p99 and no errors: "
              f"{'met' if met else 'NOT met'} ({1000 * last['topn_p99']:.1f} ms, "
              f"{len(last['errors'])} errors)")
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


if __name__ == "__main__":
    main()
