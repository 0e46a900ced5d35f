"""Trials per hour on the current device: one full default trial with its trainings one after
another in float32 (`training.split_batch: 1`, the old path), batched in float32, and batched
in the device's precision (the default; bfloat16 on a CPU that has it), in one run; then
trials as the search samples them (median and p90 wall time), with the memory they leave
behind; on a GPU also the memory one worker takes and whether two workers share it.

    python benchmarks/trial_throughput.py                  # default trial each way + 20 sampled
    python benchmarks/trial_throughput.py --sampled 5      # fewer sampled trials
    python benchmarks/trial_throughput.py --sampled 0      # the default trial only

Data: the bundled sample (7 assets, 2023), the product's defaults (CPCV 15 splits + final
fit, 200,000 env steps each, n_envs 64). Targets (issue 14): a full default trial <= 60 s on
one H100 and on 2 CPU cores; memory growth over 20 trials < 50 MB.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from cappuccino_core.artifacts.store import TrialArtifacts
from cappuccino_core.common.config import load_config
from cappuccino_core.data import load_bars
from cappuccino_core.storage.database import app_engine
from cappuccino_core.common.threads import set_torch_threads
from cappuccino_core.training.objective import (Objective, new_train_end, prepare_data,
                                                split_batch, training_precision)
from cappuccino_core.training.search_space import default_params

# The default network and algorithm as a trial: PPOConfig's defaults, except ent_coef, whose
# default (0) is outside the searched range
DEFAULT_TRIAL = {**default_params(), "ent_coef": 1e-5}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def gpu_mb(device: str) -> float:
    return torch.cuda.memory_reserved() / 2**20 if device == "cuda" else 0.0


def setup(tmp: Path):
    (tmp / "etc").mkdir(parents=True)
    (tmp / "etc" / "cappuccino.yaml").write_text(f"paths: {{state_dir: {tmp / 'state'}}}\n")
    cfg = load_config(tmp / "etc")
    bars = load_bars(cfg)
    return cfg, prepare_data(bars, new_train_end(bars, cfg.training.heldout_days,
                                                  cfg.bar_seconds), cfg.data.feature_set)


def objective(cfg, data, device: str, batch: int | None,
              precision: str = "auto") -> Objective:
    c = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, split_batch=batch,
                                                              precision=precision))
    return Objective(c, data, "bench", TrialArtifacts(c, app_engine(c)), device=device)


def timed_trial(obj: Objective, study: optuna.Study, params: dict | None) -> float:
    if params is not None:
        study.enqueue_trial(params)
    t0 = time.perf_counter()
    study.optimize(obj, n_trials=1, gc_after_trial=True)
    if obj.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def two_workers() -> str:
    """Two worker processes on one GPU at once, each one default batched trial."""
    cmd = [sys.executable, __file__, "--sampled", "0", "--batched-only", "--child"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate()[0] for p in procs]
    ok = all(p.returncode == 0 for p in procs)
    walls = [line for out in outs for line in out.splitlines() if line.startswith("batched")]
    return ("both finished" if ok else "FAILED: " + outs[0][-500:]) + "; " + " | ".join(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sampled", type=int, default=20,
                        help="trials as the search samples them (0: none)")
    parser.add_argument("--batched-only", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    set_torch_threads(1, "benchmark")
    name = (torch.cuda.get_device_name() if device == "cuda"
            else f"CPU, {torch.get_num_threads()} threads")
    cfg, data = setup(Path(tempfile.mkdtemp(prefix="cappuccino-trials-")))
    n_trainings = 0
    if not args.child:
        print(f"device: {device} ({name}), torch {torch.__version__}; data: bundled sample, "
              f"{len(data.bars)} bars x {len(data.bars.symbols)} assets")

    walls = {}
    # the old path (one training at a time, float32), batched in float32, and batched in the
    # device's precision (the default), when that is not float32
    modes = [("sequential", 1, "float32"), ("batched", None, "float32")]
    if training_precision(cfg.training, device) != "float32":
        modes.append(("batched", None, "auto"))
    if args.batched_only:
        modes = modes[-1:]
    for label, batch, precision in modes:
        obj = objective(cfg, data, device, batch, precision)
        n_trainings = len(obj.splits) + 1
        study = optuna.create_study(direction="maximize")
        label = f"{label}, {obj.precision}"
        walls[label] = timed_trial(obj, study, DEFAULT_TRIAL)
        print(f"{label:<19} (split_batch {obj.split_batch:>2}): one default trial "
              f"{walls[label]:6.1f} s = {3600 / walls[label]:5.1f} trials/hour, "
              f"value {study.trials[0].value:+.3f}, GPU memory {gpu_mb(device):.0f} MB",
              flush=True)
    if args.child:
        return
    old, *_, default = walls
    if old != default:
        print(f"default vs the old path: {walls[old] / walls[default]:.2f}x faster "
              f"({n_trainings} trainings; batched {split_batch(cfg.training, device, n_trainings)}"
              f" at a time, {default.split(', ')[1]})")
    target = 60
    print(f"target: a full default trial <= {target} s on {device}: "
          f"{'met' if walls[default] <= target else 'NOT met'} ({walls[default]:.0f} s)")
    if device == "cuda":
        print(f"two workers on one GPU: {two_workers()}")

    if args.sampled:
        obj = objective(cfg, data, device, None)
        study = optuna.create_study(direction="maximize",
                                    sampler=optuna.samplers.RandomSampler(seed=0),
                                    pruner=optuna.pruners.NopPruner())
        times, rss, gpu = [], [], []
        for i in range(args.sampled):
            times.append(timed_trial(obj, study, None))
            gc.collect()
            rss.append(rss_mb())
            gpu.append(gpu_mb(device))
            t = study.trials[-1]
            print(f"  sampled trial {i + 1}/{args.sampled}: {times[-1]:6.1f} s "
                  f"(hidden {t.params['hidden']}, layers {t.params['layers']}, "
                  f"epochs {t.params['update_epochs']}, {t.state.name.lower()}); "
                  f"RSS {rss[-1]:.0f} MB", flush=True)
        ordered = sorted(times)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        print(f"sampled trials ({args.sampled}, random sampler, no pruning by history): "
              f"median {statistics.median(times):.1f} s, p90 {p90:.1f} s, "
              f"{3600 / statistics.median(times):.1f} trials/hour at the median")
        growth = rss[-1] - rss[0]
        print(f"memory after trial 1 -> {args.sampled}: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB "
              f"({growth:+.1f} MB), GPU {gpu[0]:.0f} -> {gpu[-1]:.0f} MB; target growth < 50 MB: "
              f"{'met' if growth < 50 and gpu[-1] - gpu[0] < 50 else 'NOT met'}")


if __name__ == "__main__":
    main()
