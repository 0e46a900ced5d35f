"""Training throughput on the current device, against a FinRL-style reference loop.

Prints: env steps/s at N = 1, 64, 1024, 16384 (eager, and compiled at 1024 and 16384); the
reference per-step single-environment numpy loop (benchmarks/finrl_reference.py) measured in
the same run and the ratios; PPO training env-steps/s at the default config and at a reference
config (2 hidden layers of 512, 16 epochs per rollout); the wall time of one full default trial
on the bundled sample; RSS after 1 and after 20 (small) trials.

    python benchmarks/train_throughput.py            # everything (about 8 minutes on 2 cores)
    python benchmarks/train_throughput.py --quick    # skip the full trial
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finrl_reference import FinRLStyleEnv  # noqa: E402

from cappuccino_core.rl.agent import PPOConfig, train_ppo  # noqa: E402
from cappuccino_core.artifacts.store import TrialArtifacts  # noqa: E402
from cappuccino_core.storage.database import app_engine  # noqa: E402
from cappuccino_core.common.config import load_config  # noqa: E402
from cappuccino_core.data import load_bars  # noqa: E402
from cappuccino_core.data.features import WARMUP, compute_features  # noqa: E402
from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market, Normalisation  # noqa: E402
from cappuccino_core.training.objective import Objective, new_train_end, prepare_data  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_rate(run_window, windows: int = 3) -> float:
    """The best of a few timed windows: the least disturbed by whatever else the machine
    does (applied alike to the reference and to the batched env)."""
    return max(run_window() for _ in range(windows))


def env_rate(market, n, device, compile=False, seconds=1.5) -> tuple[float, float]:
    env = BatchedTradingEnv(market, [(WARMUP, market.ohlc.shape[0])], n,
                            EnvSettings(episode_bars=720), seed=0, compile=compile)
    env.reset()
    w = torch.softmax(torch.randn(n, market.n_assets + 1, device=device), -1)
    obs = torch.empty(n, env.obs_size, device=device)
    t0 = time.perf_counter()
    env.step(w, with_info=False, out=obs)  # warm-up (and compilation)
    sync(device)
    warm = time.perf_counter() - t0

    def window() -> float:
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                env.step(w, with_info=False, out=obs)  # as training steps it
            steps += 10
            sync(device)
        return n * steps / (time.perf_counter() - t0)
    return best_rate(window), warm


def reference_rate(bars, feats, seconds=1.5) -> float:
    env = FinRLStyleEnv(bars.close, np.nan_to_num(feats))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(512, len(bars.symbols)))

    def window() -> float:
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for a in actions:
                env.step(a)
            steps += len(actions)
        return steps / (time.perf_counter() - t0)
    return best_rate(window)


def ppo_rate(market, device, cfg: PPOConfig) -> float:
    env = BatchedTradingEnv(market, [(WARMUP, market.ohlc.shape[0])], cfg.n_envs,
                            EnvSettings(episode_bars=720), seed=0)
    t0 = time.perf_counter()
    train_ppo(env, cfg, seed=0)
    sync(device)
    return cfg.total_timesteps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the full default trial")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}), torch {torch.__version__}")

    tmp = Path(tempfile.mkdtemp(prefix="cappuccino-bench-"))
    (tmp / "etc").mkdir()
    (tmp / "etc" / "cappuccino.yaml").write_text(f"paths: {{state_dir: {tmp / 'state'}}}\n")
    cfg = load_config(tmp / "etc")
    bars = load_bars(cfg)  # the bundled sample: 7 assets, 2023
    feats = compute_features(bars, cfg.data.feature_set)
    norm = Normalisation.fit(feats, np.arange(WARMUP, len(bars)))
    market = Market.from_bars(bars, norm, device, features=feats)
    print(f"data: bundled sample, {len(bars)} bars x {len(bars.symbols)} assets, "
          f"{len(feats[0, 0])} features")

    ref = reference_rate(bars, feats)
    print(f"\nreference (FinRL-style per-step numpy loop, 1 env): {ref:>14,.0f} env-steps/s")
    print(f"{'batched env':<24}{'N':>7}{'env-steps/s':>16}{'x reference':>13}")
    rates = {}
    for n in (1, 64, 1024, 16384):
        rate, _ = env_rate(market, n, device)
        rates[("eager", n)] = rate
        print(f"{'eager':<24}{n:>7}{rate:>16,.0f}{rate / ref:>13.1f}")
    for n in (1024, 16384):
        rate, warm = env_rate(market, n, device, compile=True)
        rates[("compiled", n)] = rate
        print(f"{'compiled (' + format(warm, '.0f') + ' s once)':<24}{n:>7}{rate:>16,.0f}"
              f"{rate / ref:>13.1f}")
    best = max(rates[("eager", 1024)], rates[("compiled", 1024)])
    print(f"target N=1024 >= 100x reference: {'met' if best >= 100 * ref else 'NOT met'} "
          f"({best / ref:.0f}x)")

    print()
    default = PPOConfig(total_timesteps=131_072)
    reference_cfg = dataclasses.replace(default, hidden=512, layers=2, update_epochs=16,
                                        total_timesteps=65_536)
    for label, c in (("default (2x128, 4 epochs)", default),
                     ("reference (2x512, 16 epochs)", reference_cfg)):
        print(f"PPO training, {label:<30}: {ppo_rate(market, device, c):>12,.0f} env-steps/s "
              f"(N={c.n_envs}, {c.n_steps} steps per rollout)")

    data = prepare_data(bars, new_train_end(bars, cfg.training.heldout_days, cfg.bar_seconds),
                        cfg.data.feature_set)
    if not args.quick:
        study = optuna.create_study(direction="maximize")
        obj = Objective(cfg, data, "bench", TrialArtifacts(cfg, app_engine(cfg)), device=device)
        t0 = time.perf_counter()
        study.optimize(obj, n_trials=1)
        wall = time.perf_counter() - t0
        print(f"\none full default trial ({cfg.training.cv}, {len(obj.splits)} splits + final fit, "
              f"{cfg.training.total_timesteps:,} steps each): {wall:.0f} s "
              f"(target <= 300 s: {'met' if wall <= 300 else 'NOT met'}), "
              f"value {study.trials[0].value:.3f}")

    small = dataclasses.replace(cfg, training=dataclasses.replace(
        cfg.training, total_timesteps=4096, n_envs=16, cv="walk_forward", cv_groups=3))
    study = optuna.create_study(direction="maximize")
    obj = Objective(small, data, "rss", TrialArtifacts(small, app_engine(small)), device=device)
    study.optimize(obj, n_trials=1, gc_after_trial=True)
    gc.collect()
    after_1 = rss_mb()
    study.optimize(obj, n_trials=19, gc_after_trial=True)
    gc.collect()
    after_20 = rss_mb()
    print(f"\nRSS after 1 trial: {after_1:.0f} MB, after 20: {after_20:.0f} MB, "
          f"growth {after_20 - after_1:+.1f} MB (target < 50 MB: "
          f"{'met' if after_20 - after_1 < 50 else 'NOT met'}); small trials: walk-forward, "
          f"2 splits + final fit, 4,096 steps each")


if __name__ == "__main__":
    main()
