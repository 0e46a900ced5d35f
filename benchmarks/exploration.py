"""Exploration that pays for noise, measured (issue 26, points 3-5): training fees per hour and
how near-constant the trained policies are, per action space and initial noise.

Each row trains two seeds (batched, as a trial's splits) on the 7 default assets' hourly bars
before a benchmark window, with PPO's defaults but `n_steps`/`num_minibatches` as given, and:

- training fees/hour: fees the training rollouts paid (sampled actions, the dead zone applied as
  in trading), in basis points of equity per hour, averaged over the fit;
- gradient steps: Adam steps per fit (updates x epochs x minibatches);
- held out (the window's first 30 days, deterministic policy, the product's rules): turnover per
  day, the near-constant flag (standing weights move less than 0.01, training/objective.py) and
  the return against holding under the same rules.

"before" rows are the search space as it was (weights space, log-std -2..0, 128-step rollouts
in 2 minibatches at the least); the others are today's.

    python benchmarks/exploration.py [--window bear] [--timesteps 40000]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cappuccino_core.data.features import WARMUP  # noqa: E402
from cappuccino_core.rl.agent import PPOConfig, SplitPolicy, gradient_steps, train_ppo_splits  # noqa: E402
from cappuccino_core.rl.backtest import HoldEqualWeight, hold_settings, run_backtests  # noqa: E402
from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market, Normalisation  # noqa: E402
from cappuccino_core.training.objective import NEAR_CONSTANT_SPREAD  # noqa: E402
from signal_ceiling import ASSETS, WINDOWS, load  # noqa: E402

TRAIN_DAYS, TEST_DAYS = 365, 30
# (label, action space, init_log_std, n_steps, num_minibatches)
ROWS = [("before", "weights", 0.0, 128, 2), ("before", "weights", -1.0, 128, 2),
        ("before", "weights", -2.0, 128, 2),
        ("after", "weights", -1.0, 32, 8), ("after", "weights", -2.0, 32, 8),
        ("after", "weights", -3.0, 32, 8),
        ("after", "exposure", -1.0, 32, 8), ("after", "exposure", -2.0, 32, 8),
        ("after", "exposure", -3.0, 32, 8),
        ("after", "relative", -1.0, 32, 8), ("after", "relative", -2.0, 32, 8),
        ("after", "relative", -3.0, 32, 8)]


def fees_per_hour(env: BatchedTradingEnv) -> list[float]:
    """Wrap `env.step` so that every training step's fees (as a share of equity) are kept."""
    shares, original = [], env.step

    def step(weights, with_info=True, out=None):
        result = original(weights, with_info=True, out=out)
        info = result[3]
        shares.append(float((info["fees"] / info["equity"]).mean()))
        return result
    env.step = step
    return shares


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", default="bear", choices=sorted(WINDOWS))
    p.add_argument("--timesteps", type=int, default=40_000)
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    started = time.monotonic()
    bars, feats = load(ASSETS["default"], "v1")
    start = pd.Timestamp(WINDOWS[args.window][0], tz="UTC")
    test_lo = int(bars.index.searchsorted(start))
    test_hi = test_lo + TEST_DAYS * 24
    train_lo = max(WARMUP, test_lo - TRAIN_DAYS * 24)
    market = Market.from_bars(bars, Normalisation.fit(feats, np.arange(train_lo, test_lo)),
                              features=feats)
    base = EnvSettings(lookback=1, episode_bars=336)
    hold = run_backtests(HoldEqualWeight(market.n_assets), [market], [(test_lo, test_hi)],
                         hold_settings(base))[0]
    print(f"{args.window}: trained on {bars.index[train_lo]:%Y-%m-%d}..{bars.index[test_lo]:%Y-%m-%d}, "
          f"held out {TEST_DAYS} days; {args.timesteps} env steps per fit, {args.seeds} seeds; "
          f"holding {hold.equity[-1] / hold.equity[0] - 1:+.1%}")
    print(f"{'':<7} {'space':<9} {'log-std':>7} {'grad steps':>10} {'fees bps/h':>10} "
          f"{'turnover/day':>12} {'near-const':>10} {'excess vs hold':>14}")
    seeds = list(range(args.seeds))
    for label, space, log_std, n_steps, minibatches in ROWS:
        s = dataclasses.replace(base, action_space=space)
        ppo = PPOConfig(total_timesteps=args.timesteps, n_envs=64, n_steps=n_steps,
                        num_minibatches=minibatches, init_log_std=log_std)
        env = BatchedTradingEnv.splits([market] * len(seeds), [[(train_lo, test_lo)]] * len(seeds),
                                       ppo.n_envs, s, seeds)
        shares = fees_per_hour(env)
        agents = train_ppo_splits(env, ppo, seeds)
        results = run_backtests(SplitPolicy(agents, seeds), [market] * len(seeds),
                                [(test_lo, test_hi)] * len(seeds), s)
        spread = [float(r.weights.std(axis=0).mean()) for r in results]
        near = sum(x < NEAR_CONSTANT_SPREAD for x in spread)
        excess = np.mean([np.log(r.equity[-1] / hold.equity[-1]) for r in results])
        turnover = np.mean([r.turnover for r in results]) / TEST_DAYS
        print(f"{label:<7} {space:<9} {log_std:>7.1f} {gradient_steps(ppo):>10} "
              f"{np.mean(shares) * 1e4:>10.2f} {turnover:>12.3f} {near:>7}/{len(seeds)} "
              f"{excess:>+14.3f}", flush=True)
    print(f"\n{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
