"""`cappuccino train --study S --n-trials K --workers W`: workers in the foreground.

The W workers are the same program systemd runs (`daemons/trainer.py`), started as child
processes; this process shows a progress bar of finished trials and, on Ctrl-C or SIGTERM,
stops the workers the way systemd would (SIGTERM) and waits for them, so no trial is left
RUNNING and no worker outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from ..common.config import Config, ConfigError
from ..common.errors import Terminated
from ..common.threads import torch_threads
from .worker import finished_count, open_study, set_target, target_of


def train_foreground(cfg: Config, study_name: str | None, n_trials: int | None,
                     workers: int) -> int:
    if not study_name:
        raise ConfigError("active_study.yaml", "study", None,
                          "a study: pass --study or set the active study")
    if workers < 1:
        raise ConfigError("command line", "--workers", workers, "a number >= 1")
    study = open_study(cfg, study_name)
    if n_trials is not None:
        set_target(study, n_trials)
    target = target_of(study, cfg)
    env = {**os.environ, "CAPPUCCINO_CONFIG_DIR": cfg.config_dir,
           # one share of the cores each: oversubscribed torch threads spin and crawl
           "CAPPUCCINO_TORCH_THREADS": str(torch_threads(workers))}
    procs = [subprocess.Popen([sys.executable, "-m", "daemons.trainer", f"{study_name}:{k}"],
                              env=env) for k in range(workers)]
    bar = tqdm(total=target, initial=finished_count(study), unit="trial",
               desc=f"study {study_name}", disable=None)

    stopped = None  # the exit code of a stop asked for: 130 (Ctrl-C), 143 (SIGTERM)
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(2)
            bar.n = finished_count(study)
            try:
                bar.set_postfix_str(f"best {study.best_value:.3f}")
            except ValueError:
                pass
            bar.refresh()
    except KeyboardInterrupt as e:
        stopped = 143 if isinstance(e, Terminated) else 130
        print("stopping the workers: each finishes its PPO update; a trial in progress is "
              "queued again", file=sys.stderr)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait()
    finally:
        bar.n = finished_count(study)
        bar.close()
    codes = [p.wait() for p in procs]
    done = finished_count(study)
    print(f"study {study_name}: {done}/{target} trials finished"
          + (f", best value {study.best_value:.4f} (trial {study.best_trial.number})"
             if done else ""))
    if stopped is not None:
        print(f"stopped before the target ({'SIGTERM' if stopped == 143 else 'Ctrl-C'})",
              file=sys.stderr)
        return stopped
    return max(codes)
