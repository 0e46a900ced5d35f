"""`cappuccino train start|stop`: the usual systemctl calls for training workers.

`start --study S --workers W --n-trials K [--activate]` sets the study's target, makes it the
active study if asked (so that training, ensemble and trader follow one study from the
start), and starts `cappuccino-train@S:0` .. `S:W-1`.
`stop --study S` stops every worker of that study on this host.
"""

from __future__ import annotations

import subprocess

from ..config import Config, ConfigError
from ..studies import write_active_study
from ..threads import cores_given, torch_threads
from .worker import open_study, set_target


def _systemctl(*args: str) -> int:
    result = subprocess.run(["systemctl", *args])
    return result.returncode


def train_start(cfg: Config, study: str | None, workers: int, n_trials: int | None,
                activate: bool) -> int:
    if not study:
        raise ConfigError("command line", "--study", None, "a study name")
    s = open_study(cfg, study)  # created now, so the sync and the status can see it
    if n_trials is not None:
        set_target(s, n_trials)
    if activate:
        write_active_study(cfg.config_dir, study)
        print(f"active study is now {study}")
    units = [f"cappuccino-train@{study}:{k}.service" for k in range(workers)]
    code = _systemctl("start", *units)
    print(("started " if code == 0 else "could not start ") + ", ".join(units))
    if workers != cfg.training.workers_per_host:
        print(f"note: training.workers_per_host is {cfg.training.workers_per_host}, so each "
              f"worker takes {torch_threads(cfg.training.workers_per_host)} torch thread(s) of "
              f"{cores_given()} core(s); for {workers} workers on this host set "
              f"training.workers_per_host: {workers} (threads.py)")
    return code


def train_stop(study: str | None) -> int:
    if not study:
        raise ConfigError("command line", "--study", None, "a study name")
    code = _systemctl("stop", f"cappuccino-train@{study}:*.service",
                      f"cappuccino-train@{study}.service")
    print(f"stopped the workers of {study}" if code == 0 else f"systemctl stop failed ({code})")
    return code
