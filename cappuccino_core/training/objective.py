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
and backtests it deterministically on each test group as its own episode. The trainings share
hyperparameters, so `training.split_batch` of them run as one batched computation (each
exactly as it would alone: tests/test_training.py). As each batch finishes, the running mean is
reported split by split, so the pruner can stop a bad trial early. A split that fails fails the
trial: nothing is averaged away.

The weights kept: after the splits, a final fit on the whole training range (everything before
the held-out window) with the same hyperparameters; that is the model an ensemble serves.
"""

from __future__ import annotations

import ctypes
import functools
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
from ..artifacts.model import ModelSpec, NetworkSpec, save_artifact
from ..artifacts.store import EVENTS_DIR, TrialArtifacts, staging_dir
from ..artifacts.tb_events import EventWriter
from ..common.config import Config
from ..common.errors import CappuccinoError
from ..data import venue
from ..data.bars import Bars
from ..data.features import WARMUP, compute_features, feature_names
from ..rl.actions import n_outputs
from ..rl.agent import ActorCritic, PPOConfig, SplitPolicy, TrainStats, train_ppo_splits
from ..rl.backtest import HoldEqualWeight, hold_settings, run_backtests, sharpe
from ..rl.env import (
    BatchedTradingEnv,
    EnvSettings,
    Market,
    Normalisation,
    observation_size,
)
from ..storage.optuna_db import (
    ATTR_ARTIFACT_ID,
    ATTR_POLICY,
    ATTR_SEED,
    ATTR_SHA256,
    ATTR_SPLITS,
    trial_id,
)
from .cv import Split, make_splits
from .search_space import sample_params, split_params

log = logging.getLogger(__name__)
STD_PENALTY = 0.1
# The objective value's name (the dashboard's column): the splits' excess Sharpe over holding
# under the same rules, mean less STD_PENALTY x their spread.
OBJECTIVE_NAME = "cv_excess_sharpe_penalised"


class Interrupted(CappuccinoError):
    """Raised inside a trial when the worker is asked to stop (SIGTERM)."""
    label = "interrupted"


class HeldOutError(CappuccinoError):
    """Training was about to touch the held-out window."""
    label = "held-out window"


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


def new_train_end(bars: Bars, heldout_days: int, bar_seconds: int) -> pd.Timestamp:
    """Where a new study's held-out window starts (recorded once as its `train_end`, then read
    by `rl.window.held_out_start`): the data's end less `heldout_days`."""
    end = bars.index[-1] + pd.Timedelta(seconds=bar_seconds)
    return end - pd.Timedelta(days=heldout_days)


def prepare_data(bars: Bars, train_end: pd.Timestamp, feature_set: str) -> TrainingData:
    data = TrainingData(bars, compute_features(bars, feature_set), pd.Timestamp(train_end))
    if data.train_hi - WARMUP < 500:
        raise ValueError(f"only {data.train_hi - WARMUP} bars to train on before {train_end}")
    return data


def trial_seed(study: str, trial_id: int) -> int:
    """Differs per trial, reproducible from the study and trial id."""
    digest = hashlib.sha256(f"{study}:{trial_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


ProgressHook = Callable[[str], None]


@dataclass(frozen=True)
class Training:
    """One training of a trial: a CV split's (`split` set) or the final fit's."""
    segments: list[tuple[int, int]]
    seed: int
    run: str  # names its TensorBoard tags (`run/approx_kl`)
    split: Split | None


def batches(trainings: list[Training], size: int) -> list[list[Training]]:
    return [trainings[i:i + size] for i in range(0, len(trainings), size)]


def describe(group: list[Training], n_splits: int) -> str:
    """"split 3/15", "splits 1-8/15", "splits 9-15/15 and the final fit", "final fit"."""
    idx = [t.split.index + 1 for t in group if t.split is not None]
    text = ("" if not idx else f"split {idx[0]}/{n_splits}" if len(idx) == 1
            else f"splits {idx[0]}-{idx[-1]}/{n_splits}")
    if group[-1].split is None:
        text = f"{text} and the final fit" if text else "final fit"
    return text


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


# On 2 CPU cores (bfloat16 hidden layers) a default trial took 60.0 s four trainings at a
# time, 56.7 s eight and 56.2 s all sixteen at once (benchmarks/trial_throughput.py): eight
# keep the gain with half the memory, and the pruner can stop a bad trial halfway.
CPU_SPLIT_BATCH = 8


def split_batch(training, device: str, n_trainings: int) -> int:
    """How many of a trial's trainings run at once (`training.split_batch`; null: every one
    on a GPU, where one batched computation fills it and sixteen small ones starve it;
    CPU_SPLIT_BATCH on a CPU)."""
    if training.split_batch is not None:
        return min(training.split_batch, n_trainings)
    return n_trainings if device.startswith("cuda") else min(CPU_SPLIT_BATCH, n_trainings)


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX): there a
    bfloat16 PPO update is ~1.6x a float32 one; elsewhere oneDNN emulates it, slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private: may go away
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def training_precision(training, device: str) -> str:
    """`training.precision`, with auto resolved for the device: bfloat16 on a CPU that has it
    natively (measured: same learning on the planted-signal test, ~20% shorter default trial);
    float32 on a GPU, where bfloat16 is not measured yet."""
    if training.precision != "auto":
        return training.precision
    return "bfloat16" if device.startswith("cpu") and native_bfloat16() else "float32"


def release_memory() -> None:
    """After a trial: collect, then hand the freed heap back to the system (glibc keeps it
    otherwise, and a worker's RSS follows the largest trial it has run, not the current)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


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
        self.split_batch = split_batch(cfg.training, device, len(self.splits) + 1)
        self.precision = training_precision(cfg.training, device)

    def market(self, train_segments: list[tuple[int, int]]) -> tuple[Market, Normalisation]:
        rows = np.concatenate([np.arange(lo, hi) for lo, hi in train_segments])
        norm = Normalisation.fit(self.data.features, rows)
        return Market.from_bars(self.data.bars, norm, self.device, features=self.data.features,
                                prices=self.prices), norm

    @functools.cached_property
    def prices(self) -> Market:
        """The bars' prices on the device, built once: every split's market shares them
        (its features, unnormalised, serve holding, which reads none)."""
        A, F = self.data.features.shape[1:]
        return Market.from_bars(self.data.bars, Normalisation(np.zeros((A, F)), np.ones((A, F))),
                                self.device, features=self.data.features)

    def train(self, trainings: list[Training], ppo: PPOConfig, env: EnvSettings, label: str):
        """Train `trainings` at once (one batched computation); returns (agents, markets,
        normalisations), one each per training. `label` for progress lines."""
        for t in trainings:
            self.data.check_segments(t.segments)
        markets, norms = zip(*(self.market(t.segments) for t in trainings))
        benv = BatchedTradingEnv.splits(list(markets), [t.segments for t in trainings],
                                        ppo.n_envs, env, [t.seed for t in trainings],
                                        compile=self.cfg.training.compile_env)
        last: list[TrainStats] = []

        def on_update(stats: list[TrainStats]) -> None:
            if self.should_stop():
                raise Interrupted(f"stopped during {label}")
            for t, st in zip(trainings, stats):
                if self.events is not None:  # TensorBoard tags `run/approx_kl`
                    self.events.scalars(st.env_steps, st.diagnostics(), prefix=f"{t.run}/")
            last[:] = stats
            self.progress(f"{label}, update {stats[0].update}/{stats[0].n_updates}")

        agents = train_ppo_splits(benv, ppo, [t.seed for t in trainings], on_update)
        self.last_updates += last
        return agents, list(markets), list(norms)

    def hold_returns(self, env: EnvSettings) -> dict[tuple[int, int], np.ndarray]:
        """Equal-weight buy-and-hold under the same rules over every test range of the
        splits (the yardstick; it reads no features, so one backtest per range serves all)."""
        ranges = sorted({r for split in self.splits for r in split.test})
        hold = run_backtests(HoldEqualWeight(self.prices.n_assets), [self.prices] * len(ranges),
                             ranges, hold_settings(env))
        return {r: res.returns for r, res in zip(ranges, hold)}

    def evaluate(self, splits: list[Split], agents: list[ActorCritic], markets: list[Market],
                 env: EnvSettings, hold: dict) -> list[dict]:
        """Each split's agent backtested deterministically on each of its test ranges (its own
        episode), all in one batched backtest."""
        rows = [(j, r) for j, split in enumerate(splits) for r in split.test]
        policy = SplitPolicy(agents, [j for j, _ in rows])
        results = run_backtests(policy, [markets[j] for j, _ in rows], [r for _, r in rows], env)
        out = []
        for j, split in enumerate(splits):
            mine = [(r, res) for (k, r), res in zip(rows, results) if k == j]
            agent_r, bench_r, hold_r = (np.concatenate(x) for x in zip(*(
                (res.returns, res.benchmark_returns, hold[r]) for r, res in mine)))
            metrics = [res.metrics() for _, res in mine]
            o = {"sharpe": sharpe(agent_r), "bh_sharpe": sharpe(bench_r),
                 "hold_sharpe": sharpe(hold_r),  # holding under the same rules: the yardstick
                 "return": float(np.prod(1 + agent_r) - 1),
                 "bh_return": float(np.prod(1 + bench_r) - 1),
                 "max_drawdown": float(max(m["max_drawdown"] for m in metrics)),
                 "turnover": float(np.mean([m["turnover"] for m in metrics])),
                 **weight_spread(np.concatenate([res.weights for _, res in mine]))}
            o["excess_sharpe"] = o["sharpe"] - o["hold_sharpe"]
            if not np.isfinite(list(o.values())).all():
                raise FloatingPointError(f"split {split.index}: non-finite result {o}")
            out.append(o)
        return out

    def __call__(self, trial: optuna.Trial) -> float:
        if self.cfg.training.compile_env:
            # Each trial's env settings compile anew; dropping the last trial's code keeps
            # memory flat and stays below torch's recompile limit (past it, steps run eager).
            torch.compiler.reset()
        params = sample_params(trial)
        ppo, env = split_params(params, self.base_env, self.total_timesteps,
                                self.cfg.training.n_envs, self.cfg.training.target_kl,
                                self.precision)
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
            release_memory()

    def trainings(self, seed: int) -> list[Training]:
        """The trial's trainings in order: its CV splits, then the final fit."""
        n = len(self.splits)
        return [Training(s.train, seed + s.index, f"split_{s.index + 1}_of_{n}", s)
                for s in self.splits] + [
            Training([(WARMUP, self.data.train_hi)], seed + 10_000, "final_fit", None)]

    def _run(self, trial: optuna.Trial, params: dict, ppo: PPOConfig, env: EnvSettings,
             seed: int, staging: Path) -> float:
        results, final = [], None
        hold = self.hold_returns(env)
        trainings = self.trainings(seed)
        for group in batches(trainings, self.split_batch):
            label = f"trial {trial.number}, {describe(group, len(self.splits))}"
            agents, markets, norms = self.train(group, ppo, env, label)
            tested = [(t.split, a, m) for t, a, m in zip(group, agents, markets) if t.split]
            if tested:
                splits, split_agents, split_markets = map(list, zip(*tested))
                for split, r in zip(splits, self.evaluate(splits, split_agents, split_markets,
                                                          env, hold)):
                    results.append(r)
                    trial.report(float(np.mean([x["excess_sharpe"] for x in results])),
                                 split.index)
                trial.set_user_attr(ATTR_SPLITS, results)
                for key, figure in split_summary(results).items():
                    trial.set_user_attr(key, figure)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after split {splits[-1].index + 1}")
            if group[-1].split is None:
                final = agents[-1], markets[-1], norms[-1]
            del agents, markets, norms
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

        agent, market, norm = final
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
        return value  # release_memory() follows

    def spec(self, trial, params, ppo: PPOConfig, env: EnvSettings, norm: Normalisation,
             seed: int, value: float, market: Market) -> ModelSpec:
        bars = self.data.bars
        return ModelSpec(
            study=self.study_name, trial_id=trial_id(trial), trial_number=trial.number,
            value=value, code_version=__version__, symbols=tuple(bars.symbols),
            timeframe=self.cfg.data.timeframe, lookback=env.lookback,
            feature_set=self.cfg.data.feature_set,
            feature_names=feature_names(self.cfg.data.feature_set), normalisation=norm,
            hyperparameters=params,
            ppo=ppo.to_dict(), env=env, seed=seed,
            network=NetworkSpec(observation_size(market.n_assets, market.n_features,
                                                 env.lookback),
                                n_outputs(env.action_space, market.n_assets),
                                ppo.hidden, ppo.layers),
            trained_on={"from": str(bars.index[WARMUP]),
                        "to": str(bars.index[self.data.train_hi - 1]),
                        "venue": venue(self.cfg)},
            held_out_from=str(self.data.train_end))
