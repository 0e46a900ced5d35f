"""Two training workers and the trader on one box: does each keep its fair share of the cores?

Times one PPO update (the default network, 2x128, n_envs 64, 64 steps per rollout, 4 epochs of
4 minibatches) in three runs, all in this one run:

- alone: one worker with every core this process is given;
- shared, threads from the cores (`threads.set_torch_threads`): two workers with
  `training.workers_per_host: 2`, plus a trader deciding for a 10-member ensemble every 100 ms
  (a real trader decides hourly and checks stops each minute: this one is far busier);
- shared, unconfigured: the same three processes with torch's default thread count (every
  core each), what happened before: only the trainer set threads, from an optional variable.

Prints each run's median update time and its ratio to alone. Target: shared <= 2.5x alone
(two workers on the cores one had would be 2x).

    python benchmarks/thread_share.py [--updates 12]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def train_worker(share: int | None, updates: int, start, out) -> None:
    import numpy as np
    import torch

    from cappuccino_core.rl.agent import PPOConfig, train_ppo
    from cappuccino_core.data.features import WARMUP, compute_features
    from cappuccino_core.data.synthetic import synthetic_market
    from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market, Normalisation
    from cappuccino_core.common.threads import set_torch_threads
    if share is not None:
        set_torch_threads(share, "worker")
    bars = synthetic_market(n_assets=7, n_bars=4000, seed=3)
    feats = compute_features(bars, "v1")
    market = Market.from_bars(bars, Normalisation.fit(feats, np.arange(WARMUP, 3500)),
                              features=feats)
    ppo = PPOConfig(total_timesteps=updates * 64 * 64, n_envs=64)
    env = BatchedTradingEnv(market, [(WARMUP, 3500)], ppo.n_envs, EnvSettings(), seed=0)
    stamps = []
    start.wait()
    stamps.append(time.perf_counter())
    train_ppo(env, ppo, seed=0, on_update=lambda st: stamps.append(time.perf_counter()))
    out.put(("worker", list(np.diff(stamps)[2:]), torch.get_num_threads()))


def trader(configured: bool, stop, start, out) -> None:
    import torch

    from cappuccino_core.rl.agent import ActorCritic
    from cappuccino_core.common.threads import set_torch_threads
    if configured:
        set_torch_threads(1, "trader")
    members = [ActorCritic(7 * 20 + 15, 8, 128, 2, -0.5) for _ in range(10)]
    obs = torch.randn(1, 7 * 20 + 15)
    start.wait()
    decisions = 0
    while not stop.is_set():
        torch.stack([m.weights(obs) for m in members]).mean(0)
        decisions += 1
        time.sleep(0.1)
    out.put(("trader", decisions, torch.get_num_threads()))


def run(workers: list[int | None], with_trader: bool, configured: bool, updates: int):
    ctx = mp.get_context("spawn")  # each process starts torch afresh, as a service does
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=train_worker, args=(share, updates, start, out))
             for share in workers]
    if with_trader:
        procs.append(ctx.Process(target=trader, args=(configured, stop, start, out)))
    for p in procs:
        p.start()
    time.sleep(8)  # imports and set-up, before the clock starts for everyone at once
    start.set()
    times, threads = [], []
    for _ in workers:
        _, t, n = out.get(timeout=1800)
        times += t
        threads.append(n)
    stop.set()
    if with_trader:
        out.get(timeout=60)
    for p in procs:
        p.join()
    return statistics.median(times), threads


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=12)
    args = p.parse_args()
    from cappuccino_core.common.threads import cores_given
    print(f"{cores_given()} cores given; one PPO update of the default network, median over "
          f"{args.updates - 2} updates per worker\n")
    alone, t_alone = run([1], False, True, args.updates)
    fair, t_fair = run([2, 2], True, True, args.updates)
    unset, t_unset = run([None, None], True, False, args.updates)
    print(f"{'run':<48}{'threads':>9}{'update':>10}{'vs alone':>10}")
    for label, secs, threads in (("alone", alone, t_alone),
                                 ("2 workers + trader, threads from the cores", fair, t_fair),
                                 ("2 workers + trader, torch's default threads", unset, t_unset)):
        print(f"{label:<48}{'/'.join(map(str, threads)):>9}{secs:>9.2f}s{secs / alone:>9.1f}x")
    print(f"\ntarget: shared <= 2.5x alone: {'met' if fair <= 2.5 * alone else 'NOT met'} "
          f"({fair / alone:.1f}x)")


if __name__ == "__main__":
    main()
