"""The Optuna objective: cross-validated PPO on the training range, then a final fit.

Objective value, documented and independent of test length:

    mean over test splits of (annualised Sharpe of the agent - annualised Sharpe of equal-weight
    buy-and-hold traded under the same rules over the same bars)  -  0.1 x the standard
    deviation of those differences

"The same rules": fees, slippage, the cash reserve, position caps, the trailing stop and the
re-entry cooldown (`backtest.HoldEqualWeight`): the alternative a user of this product really
has. Against frictionless holding instead, holding itself would score about -1 (fees and stop
exits cost it ~1 of Sharpe), and `ensemble.min_value: 0` would mean "beat something nobody can
trade". Frictionless buy-and-hold's Sharpe is recorded beside it (`bh_sharpe`).

Each split trains a fresh agent on its training segments (normalisation fitted on them only)
and backtests it deterministically on each test group as its own episode. After each split the
running mean is reported, so the pruner can stop a bad trial early. A split that fails fails the
trial: nothing is averaged away.

The weights kept: after the splits, a final fit on the whole training range (everything before
the held-out window) with the same hyperparameters; that is the model an ensemble serves.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
import pandas as pd
import torch

from .. import __version__
from ..agent import PPOConfig, TrainStats, train_ppo
from ..artifact_store import EVENTS_DIR, TrialArtifacts, staging_dir
from ..artifacts import ModelSpec, NetworkSpec, save_artifact
from ..backtest import HoldEqualWeight, hold_settings, run_backtest, sharpe
from ..config import Config
from ..data import venue
from ..data.bars import Bars
from ..data.features import FEATURE_NAMES, FEATURE_SET, WARMUP, compute_features
from ..env import BatchedTradingEnv, EnvSettings, Market, Normalisation, observation_size
from ..optuna_db import (ATTR_ARTIFACT_ID, ATTR_POLICY, ATTR_SEED, ATTR_SHA256, ATTR_SPLITS,
                         trial_id)
from ..tb_events import EventWriter
from .cv import Split, make_splits
from .search_space import sample_params, split_params

log = logging.getLogger(__name__)
STD_PENALTY = 0.1


class Interrupted(Exception):
    """Raised inside a trial when the worker is asked to stop (SIGTERM)."""


class HeldOutError(Exception):
    """Training was about to touch the held-out window."""


@dataclass
class TrainingData:
    """Bars and features, with the held-out window fenced off: training and CV use indices in
    [WARMUP, train_hi) only; bars from `train_end` on are for validation."""
    bars: Bars
    features: np.ndarray
    train_end: pd.Timestamp

    @property
    def train_hi(self) -> int:
        return int(self.bars.index.searchsorted(self.train_end))

    def check_segments(self, segments: list[tuple[int, int]]) -> None:
        for lo, hi in segments:
            if hi > self.train_hi:
                raise HeldOutError(f"segment [{lo}, {hi}) reaches into the held-out window "
                                   f"starting at {self.train_end} (index {self.train_hi})")


def held_out_start(bars: Bars, heldout_days: int, bar_seconds: int) -> pd.Timestamp:
    end = bars.index[-1] + pd.Timedelta(seconds=bar_seconds)
    return end - pd.Timedelta(days=heldout_days)


def prepare_data(bars: Bars, train_end: pd.Timestamp) -> TrainingData:
    data = TrainingData(bars, compute_features(bars), pd.Timestamp(train_end))
    if data.train_hi - WARMUP < 500:
        raise ValueError(f"only {data.train_hi - WARMUP} bars to train on before {train_end}")
    return data


def trial_seed(study: str, trial_id: int) -> int:
    """Differs per trial, reproducible from the study and trial id."""
    digest = hashlib.sha256(f"{study}:{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


ProgressHook = Callable[[str], None]


# A policy whose held-out target weights move less than this over time (the standard deviation
# of each asset's weight, averaged over assets) learned next to nothing: whatever the market
# did, it held about the same portfolio.
NEAR_CONSTANT_SPREAD = 0.01


def weight_spread(weights: np.ndarray) -> dict:
    """How much target weights `[T, A]` move: over time (per asset, then averaged) and across
    assets (per bar, then averaged)."""
    return {"spread_time": float(weights.std(axis=0).mean()) if len(weights) else 0.0,
            "spread_assets": float(weights.std(axis=1).mean()) if len(weights) else 0.0}


def split_summary(results: list[dict]) -> dict[str, float]:
    """Sortable scalars beside the per-split list (the dashboard sorts trials by them)."""
    excess = [r["excess_sharpe"] for r in results]
    return {"mean_excess_sharpe": float(np.mean(excess)),
            "worst_excess_sharpe": float(np.min(excess)),
            "mean_max_drawdown": float(np.mean([r["max_drawdown"] for r in results])),
            "mean_turnover": float(np.mean([r["turnover"] for r in results]))}


SPLIT_COLUMNS = ("excess_sharpe", "sharpe", "bh_sharpe", "return", "bh_return", "max_drawdown",
                 "turnover", "spread_time")


def split_table(results: list[dict]) -> str:
    """The splits as a markdown table (the trial's note on the dashboard)."""
    lines = ["| split | " + " | ".join(SPLIT_COLUMNS) + " |",
             "|---" * (len(SPLIT_COLUMNS) + 1) + "|"]
    lines += [f"| {i + 1} | " + " | ".join(f"{r[k]:.3f}" for k in SPLIT_COLUMNS) + " |"
              for i, r in enumerate(results)]
    return "\n".join(lines)


def save_split_note(trial: optuna.Trial, results: list[dict]) -> None:
    """The split table as the dashboard's note on the trial when optuna-dashboard is
    installed, else as a markdown user attr."""
    table = split_table(results)
    try:
        from optuna_dashboard import save_note
    except ImportError:
        trial.set_user_attr("split_table", table)
        return
    save_note(trial, "### Cross-validation splits\n\n" + table)


def ppo_summary(last_updates: list[TrainStats]) -> dict[str, float]:
    """Each training's last update's diagnostics, averaged over the trial's trainings."""
    return {f"ppo_{k}": float(np.nanmean([st.diagnostics()[k] for st in last_updates]))
            for k in TrainStats.DIAGNOSTICS}


def policy_summary(results: list[dict]) -> dict:
    """A trial's policy across its CV splits, and the near-constant flag."""
    out = {k: float(np.mean([r[k] for r in results]))
           for k in ("spread_time", "spread_assets", "turnover")}
    out["near_constant"] = out["spread_time"] < NEAR_CONSTANT_SPREAD
    return out


class Objective:
    def __init__(self, cfg: Config, data: TrainingData, study_name: str,
                 artifacts: TrialArtifacts, device: str = "cpu",
                 progress: ProgressHook | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 total_timesteps: int | None = None):
        self.cfg, self.data, self.study_name = cfg, data, study_name
        self.artifacts = artifacts
        self.events: EventWriter | None = None  # the running trial's diagnostics
        self.last_updates: list[TrainStats] = []
        self.device = device
        self.progress = progress or (lambda status: None)
        self.should_stop = should_stop or (lambda: False)
        self.total_timesteps = total_timesteps or cfg.training.total_timesteps
        self.base_env = EnvSettings.from_config(cfg)
        t = cfg.training
        self.splits = make_splits(t.cv, WARMUP, data.train_hi, t.cv_groups, t.cv_test_groups,
                                  t.embargo_hours * 3600 // cfg.bar_seconds)
        for s in self.splits:
            data.check_segments(s.train + s.test)

    def market(self, train_segments: list[tuple[int, int]]) -> tuple[Market, Normalisation]:
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in train_segments])
        norm = Normalisation.fit(self.data.features, rows)
        return Market.from_bars(self.data.bars, norm, self.device, self.data.features), norm

    def train(self, segments, ppo: PPOConfig, env: EnvSettings, seed: int, label: str,
              run: str):
        """`label` for progress lines, `run` names its TensorBoard tags (`run/approx_kl`)."""
        self.data.check_segments(segments)
        market, norm = self.market(segments)
        benv = BatchedTradingEnv(market, segments, ppo.n_envs, env, seed=seed,
                                 compile=self.cfg.training.compile_env)

        last: list[TrainStats] = []

        def on_update(st: TrainStats) -> None:
            if self.should_stop():
                raise Interrupted(f"stopped during {label}")
            if self.events is not None:
                self.events.scalars(st.env_steps, st.diagnostics(), prefix=f"{run}/")
            last[:] = [st]
            self.progress(f"{label}, update {st.update}/{st.n_updates}")

        agent = train_ppo(benv, ppo, seed, on_update)
        self.last_updates += last
        return agent, market, norm

    def evaluate_split(self, split: Split, ppo: PPOConfig, env: EnvSettings, seed: int,
                       label: str) -> dict:
        run = f"split_{split.index + 1}_of_{len(self.splits)}"
        agent, market, _ = self.train(split.train, ppo, env, seed, label, run)
        agent_r, bench_r, hold_r, dd, turnover, weights = [], [], [], [], [], []
        hold = HoldEqualWeight(market.n_assets)
        for lo, hi in split.test:
            res = run_backtest(agent.weights, market, lo, hi, env)
            agent_r.append(res.returns)
            bench_r.append(res.benchmark_returns)
            hold_r.append(run_backtest(hold, market, lo, hi, hold_settings(env)).returns)
            m = res.metrics()
            dd.append(m["max_drawdown"])
            turnover.append(m["turnover"])
            weights.append(res.weights)
        agent_r, bench_r, hold_r = (np.concatenate(r) for r in (agent_r, bench_r, hold_r))
        out = {"sharpe": sharpe(agent_r), "bh_sharpe": sharpe(bench_r),
               "hold_sharpe": sharpe(hold_r),  # holding under the same rules: the yardstick
               "return": float(np.prod(1 + agent_r) - 1),
               "bh_return": float(np.prod(1 + bench_r) - 1),
               "max_drawdown": float(max(dd)), "turnover": float(np.mean(turnover)),
               **weight_spread(np.concatenate(weights))}
        out["excess_sharpe"] = out["sharpe"] - out["hold_sharpe"]
        if not np.isfinite(list(out.values())).all():
            raise FloatingPointError(f"split {split.index}: non-finite result {out}")
        return out

    def __call__(self, trial: optuna.Trial) -> float:
        if self.cfg.training.compile_env:
            # Each trial's env settings compile anew; dropping the last trial's code keeps
            # memory flat and stays below torch's recompile limit (past it, steps run eager).
            torch.compiler.reset()
        params = sample_params(trial)
        ppo, env = split_params(params, self.base_env, self.total_timesteps,
                                self.cfg.training.n_envs, self.cfg.training.target_kl)
        seed = trial_seed(self.study_name, trial_id(trial))
        trial.set_user_attr(ATTR_SEED, seed)
        staging = Path(tempfile.mkdtemp(prefix=f".trial-{trial_id(trial)}-",
                                        dir=staging_dir(self.cfg)))
        self.events, self.last_updates = EventWriter(staging / EVENTS_DIR), []
        try:
            return self._run(trial, params, ppo, env, seed, staging)
        finally:
            self.events.close()
            self.events = None
            shutil.rmtree(staging, ignore_errors=True)

    def _run(self, trial: optuna.Trial, params: dict, ppo: PPOConfig, env: EnvSettings,
             seed: int, staging: Path) -> float:
        results = []
        for split in self.splits:
            label = f"trial {trial.number}, split {split.index + 1}/{len(self.splits)}"
            results.append(self.evaluate_split(split, ppo, env, seed + split.index, label))
            diffs = [r["excess_sharpe"] for r in results]
            trial.report(float(np.mean(diffs)), split.index)
            trial.set_user_attr(ATTR_SPLITS, results)
            for key, figure in split_summary(results).items():
                trial.set_user_attr(key, figure)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after split {split.index + 1}")
            gc.collect()
        diffs = np.array([r["excess_sharpe"] for r in results])
        value = float(diffs.mean() - STD_PENALTY * diffs.std())
        policy = policy_summary(results)
        trial.set_user_attr(ATTR_POLICY, policy)
        save_split_note(trial, results)
        if policy["near_constant"]:
            log.warning("trial %d: a near-constant policy (its target weights move by %.2f%% "
                        "over time on the test data): it learned next to nothing",
                        trial.number, 100 * policy["spread_time"])

        segment = [(WARMUP, self.data.train_hi)]
        agent, market, norm = self.train(segment, ppo, env, seed + 10_000,
                                         f"trial {trial.number}, final fit", "final_fit")
        for key, figure in ppo_summary(self.last_updates).items():
            trial.set_user_attr(key, figure)
        spec = self.spec(trial, params, ppo, env, norm, seed, value, market)
        digest = save_artifact(staging / "model", agent, spec)
        self.events.close()
        shutil.move(staging / EVENTS_DIR, staging / "model" / EVENTS_DIR)
        stored = self.artifacts.upload_directory(staging / "model", self.study_name,
                                                 trial_id(trial), trial)
        trial.set_user_attr(ATTR_ARTIFACT_ID, stored.artifact_id)
        trial.set_user_attr(ATTR_SHA256, digest)
        del agent, market
        gc.collect()
        return value

    def spec(self, trial, params, ppo: PPOConfig, env: EnvSettings, norm: Normalisation,
             seed: int, value: float, market: Market) -> ModelSpec:
        bars = self.data.bars
        return ModelSpec(
            study=self.study_name, trial_id=trial_id(trial), trial_number=trial.number,
            value=value, code_version=__version__, symbols=tuple(bars.symbols),
            timeframe=self.cfg.data.timeframe, lookback=env.lookback, feature_set=FEATURE_SET,
            feature_names=tuple(FEATURE_NAMES), normalisation=norm, hyperparameters=params,
            ppo=ppo.to_dict(), env=env, seed=seed,
            network=NetworkSpec(observation_size(market.n_assets, market.n_features,
                                                 env.lookback), market.n_assets + 1,
                                ppo.hidden, ppo.layers),
            trained_on={"from": str(bars.index[WARMUP]),
                        "to": str(bars.index[self.data.train_hi - 1]),
                        "venue": venue(self.cfg)},
            held_out_from=str(self.data.train_end))
