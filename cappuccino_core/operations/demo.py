"""`cappuccino demo`: the whole pipeline on the embedded defaults, in a temporary state dir.

No PostgreSQL, no keys, no network: SQLite storage, the bundled sample, the simulated broker.
Stages: configuration, storage, data, features, a few short training trials (progress bar),
an ensemble sync, a replay of the held-out months through the paper-trading loop with a hot
reload in the middle (a further trial is trained and published while the replay runs), an
auto-deployer decision, the HTML report, and a summary table.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from tqdm import tqdm

from ..common.config import load_config
from ..data import load_bars
from ..data.features import WARMUP, compute_features
from ..ensemble.publish import sync
from ..storage.database import SCHEMA_VERSION, app_engine, optuna_storage
from ..storage.optuna_db import STUDY_TRAIN_END
from ..trading.replay import replay
from ..training.worker import WorkerHooks, open_study, run_worker, set_target
from .deploy import record, validate
from .html_report import write_report


def write_demo_config(directory: Path) -> Path:
    etc = directory / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "cappuccino.yaml").write_text(yaml.safe_dump({
        "paths": {"state_dir": str(directory / "state")},
        "data": {"source": "csv"},
        # short trials, so the demo stays within minutes on two cores
        "training": {"total_timesteps": 30_000, "n_envs": 32, "cv": "walk_forward",
                     "cv_groups": 3, "cv_test_groups": 1},
        # the 4th trial, mid-replay, joins it; trials this short rarely beat holding or move
        # far from their start, so the demo admits any (the product's default admits only
        # those that beat holding in CV and are not near-constant)
        "ensemble": {"top_n": 4, "min_members": 2, "min_value": None,
                     "near_constant": "admit"},
    }))
    (etc / "active_study.yaml").write_text(yaml.safe_dump({"study": "demo"}))
    return etc


def train_trials(cfg, n_finished: int, seed: int | None = None) -> optuna.Study:
    """Trials in this process until the study has `n_finished`, with a progress bar; `seed`
    seeds the sampler (the same seed, the same trials and figures)."""
    study = open_study(cfg, cfg.active_study)
    set_target(study, n_finished)
    with tqdm(desc="training", unit=" updates", leave=False, mininterval=1.0) as bar:
        def status(text: str) -> None:
            bar.set_postfix_str(text)
            bar.update(1)
        sampler = None if seed is None else optuna.samplers.TPESampler(seed=seed)
        run_worker(cfg, cfg.active_study, WorkerHooks(status=status), sampler=sampler)
    return study


def run_demo(workdir: str | None = None, seed: int | None = None) -> int:
    started = time.monotonic()
    timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def stage(name: str):
        t0 = time.monotonic()
        yield
        timings.append((name, time.monotonic() - t0))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("cappuccino_core.trading.trader").setLevel(logging.ERROR)
    root = Path(workdir or tempfile.mkdtemp(prefix="cappuccino-demo-"))
    cfg = load_config(write_demo_config(root))
    print(f"[1] configuration: {cfg.config_dir} (state dir {cfg.state_dir}), "
          f"active study {cfg.active_study!r}")

    with stage("setup, data, features"):
        optuna_storage(cfg)
        engine = app_engine(cfg)
        print(f"[2] storage: {cfg.storage_url} (Optuna tables + app schema v{SCHEMA_VERSION})")
        bars = load_bars(cfg, progress=True)
        print(f"[3] data: {len(bars)} closed hourly bars x {len(bars.symbols)} assets, "
              f"{bars.index[0]:%Y-%m-%d} .. {bars.index[-1]:%Y-%m-%d %H:%M} UTC, "
              f"{int(bars.filled.any(axis=1).sum())} forward-filled gap hours")
        feats = compute_features(bars, cfg.data.feature_set)[WARMUP:]
        print(f"[4] features {cfg.data.feature_set}: {feats.shape[-1]} per asset, "
              f"{feats.shape[0]} rows after a {WARMUP}-bar warm-up, all finite: "
              f"{bool(np.isfinite(feats).all())}")

    with stage("training 3 trials"):
        study = train_trials(cfg, 3, seed)
        best = study.best_trial
        beat = sum(t.value is not None and t.value >= 0 for t in study.trials)
        print(f"[5] training: {len(study.trials)} trials ({cfg.training.cv}, "
              f"{cfg.training.total_timesteps:,} steps per fit); best value {best.value:+.3f} "
              f"(trial {best.number}); {beat} beat equal-weight buy-and-hold in CV (value >= 0)"
              f"; held-out window from {study.user_attrs[STUDY_TRAIN_END][:16]}")

    with stage("ensemble sync"):
        first = sync(cfg, engine)
        print(f"[6] ensemble sync: {first.message}")

    with stage("replay with a hot reload"):
        held_out = study.user_attrs[STUDY_TRAIN_END]
        first_held_out = int(bars.index.searchsorted(pd.Timestamp(held_out)))
        halfway = first_held_out + (len(bars) - first_held_out) // 2
        swap = {"done": False}

        def mid_run(t: int, trader) -> None:
            # halfway through, training goes on and the sync publishes: the trader reloads
            if not swap["done"] and t >= halfway:
                swap["done"] = True
                train_trials(cfg, 4, seed)
                swap["result"] = sync(cfg, engine)

        result = replay(cfg, engine, start=held_out, name="demo", on_bar=mid_run, progress=True)
        versions = " -> ".join(f"v{v}" for v in result.versions)
        print(f"[7] paper replay: {result.window}, ensembles {versions} "
              f"(hot reload mid-run: {swap.get('result').message if 'result' in swap else '-'})")

    with stage("auto-deployer decision"):
        decision = validate(cfg, engine)
        record(engine, decision)
        print(f"[8] auto-deployer: {decision.summary()}")
        if decision.promoted:
            print(f"    {sync(cfg, engine).message}")

    with stage("HTML report"):
        report = write_report(cfg, engine, root / "report.html", trader="demo")
        print(f"[9] report: {report}")

    span = bars.slice(result.window.lo, result.window.hi)
    bh = float((span.close[-1] / span.close[0]).mean() - 1)
    ret = result.equity / cfg.broker.initial_cash - 1
    print("\nsummary")
    print(f"  {'held-out window':<34}{result.window.first:%Y-%m-%d} .. "
          f"{result.window.last:%Y-%m-%d}")
    print(f"  {'paper trader (SimBroker, fees)':<34}{ret:>+9.2%}  equity "
          f"{result.equity:,.2f}")
    print(f"  {'equal-weight buy-and-hold':<34}{bh:>+9.2%}")
    for name, seconds in timings:
        print(f"  {name:<34}{seconds:>8.1f} s")
    print(f"  {'auto-deployer':<34}{'promoted' if decision.promoted else 'kept the ensemble'}")
    print(f"\nreport: {report}\ndemo finished in {time.monotonic() - started:.1f} s; "
          f"files in {root}")
    return 0
