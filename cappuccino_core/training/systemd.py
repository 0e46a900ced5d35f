"""`cappuccino train start|stop`: the usual systemctl calls for training workers.

`start --study S --workers W --n-trials K [--activate]` sets the study's target, starts
`cappuccino-train@S:0` .. `S:W-1`, and once they started makes it the active study if asked
(so that training, ensemble and trader follow one study from the start). A start that fails
changes nothing.
`stop --study S` stops every worker of that study on this host.
"""

from __future__ import annotations

import subprocess
import sys

import optuna

from ..common.config import Config, ConfigError, write_active_study
from ..common.threads import cores_given, torch_threads
from ..storage.database import optuna_storage
from ..storage.optuna_db import STUDY_TARGET
from .worker import open_study, set_target


def _systemctl(*args: str) -> int:
    try:
        return subprocess.run(["systemctl", *args]).returncode
    except FileNotFoundError:
        print("systemctl not found: systemd does not run here", file=sys.stderr)
        return 1


def train_start(cfg: Config, study: str | None, workers: int, n_trials: int | None,
                activate: bool) -> int:
    """Start the workers; only once they started, make the study active if asked. When
    systemctl fails nothing is left changed: a study this command created is deleted again,
    a target it set is put back."""
    from ..storage.database import app_engine
    from ..storage.optuna_db import study_exists
    if not study:
        raise ConfigError("command line", "--study", None, "a study name")
    engine = app_engine(cfg)
    existed = study_exists(engine, study)
    s = open_study(cfg, study)  # created now, so the sync and the status can see it
    target_before = s.user_attrs.get(STUDY_TARGET)
    if n_trials is not None:
        set_target(s, n_trials)
    units = [f"cappuccino-train@{study}:{k}.service" for k in range(workers)]
    code = _systemctl("start", *units)
    if code != 0:
        _systemctl("stop", *units)  # any that did start
        if not existed:
            optuna.delete_study(study_name=study, storage=optuna_storage(cfg))
        elif n_trials is not None:
            s.set_user_attr(STUDY_TARGET, target_before)
        print(f"could not start {', '.join(units)} (systemctl exited {code}); nothing was "
              "changed" + ("" if not activate else f": {study} is not activated"),
              file=sys.stderr)
        return 1
    print("started " + ", ".join(units))
    if activate:
        write_active_study(cfg.config_dir, study)
        print(f"active study is now {study}")
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
