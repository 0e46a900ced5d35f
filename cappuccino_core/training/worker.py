"""A training worker: runs trials of one study until its target trial count or a stop request.

Several workers (on one host or many, sharing PostgreSQL) cooperate through Optuna's storage:
the study is created race-free (`load_if_exists`), the target trial count is a study attribute
(`cappuccino train --n-trials` sets it, so all workers agree), and trial heartbeats turn a
killed worker's RUNNING trial into FAIL, after which it is retried with the same parameters.

The held-out window is fixed per study on first start and recorded in the study's user_attrs
(`train_end`); later workers train only before it, even when newer data has arrived.
"""

from __future__ import annotations

import gc
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Callable

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from ..artifacts.store import TrialArtifacts
from ..common.config import Config, check_study_name
from ..data import load_bars
from ..storage.database import app_engine, optuna_storage
from ..storage.optuna_db import (
    ATTR_RETRY_OF,
    STUDY_HELDOUT_DAYS,
    STUDY_SYMBOLS,
    STUDY_TARGET,
    STUDY_TRAIN_END,
    trial_id,
)
from .objective import (
    OBJECTIVE_NAME,
    Interrupted,
    Objective,
    new_train_end,
    prepare_data,
)

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def make_storage(cfg: Config) -> optuna.storages.RDBStorage:
    """The study storage as trainers use it: with heartbeats, stale trials retried."""
    return optuna_storage(cfg, heartbeats=True)


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    if cfg.training.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    return optuna.pruners.NopPruner()


def open_study(cfg: Config, name: str, storage=None, sampler=None) -> optuna.Study:
    """Create the study if absent (safe when several workers start at once), else load it."""
    check_study_name(name)  # it names the artifacts' directory: nothing like ../../escape
    study = optuna.create_study(study_name=name, storage=storage or make_storage(cfg),
                                direction="maximize", load_if_exists=True,
                                pruner=make_pruner(cfg), sampler=sampler)
    if study.metric_names is None:  # what the value is, in the dashboard's header
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE_NAME])
    return study


def set_target(study: optuna.Study, n_trials: int) -> None:
    study.set_user_attr(STUDY_TARGET, int(n_trials))


def target_of(study: optuna.Study, cfg: Config) -> int:
    target = study.user_attrs.get(STUDY_TARGET)  # (None: a start that failed put it back)
    return int(cfg.training.n_trials if target is None else target)


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def pick_device(cfg: Config) -> str:
    if cfg.training.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.training.device


@dataclass
class WorkerHooks:
    """How a worker talks to its supervisor: status lines, watchdog pings, stop requests."""
    status: Callable[[str], None] = lambda text: None
    ping: Callable[[], None] = lambda: None
    ready: Callable[[], None] = lambda: None
    stop: threading.Event = field(default_factory=threading.Event)


def fixed_train_end(study: optuna.Study, cfg: Config, bars) -> pd.Timestamp:
    """The study's recorded start of the held-out window, recorded now if this is the first
    worker. Training never uses bars from there on."""
    recorded = study.user_attrs.get(STUDY_TRAIN_END)
    if recorded:
        return pd.Timestamp(recorded)
    end = new_train_end(bars, cfg.training.heldout_days, cfg.bar_seconds)
    study.set_user_attr(STUDY_TRAIN_END, str(end))
    study.set_user_attr(STUDY_HELDOUT_DAYS, cfg.training.heldout_days)
    study.set_user_attr(STUDY_SYMBOLS, list(bars.symbols))
    return end


def run_worker(cfg: Config, study_name: str, hooks: WorkerHooks | None = None,
               total_timesteps: int | None = None, bars=None, sampler=None) -> int:
    """Run trials until the study's target is reached or `hooks.stop` is set.
    Returns the number of trials this worker finished."""
    hooks = hooks or WorkerHooks()
    storage = make_storage(cfg)
    study = open_study(cfg, study_name, storage, sampler)
    bars = bars if bars is not None else load_bars(cfg)
    data = prepare_data(bars, fixed_train_end(study, cfg, bars), cfg.data.feature_set)
    device = pick_device(cfg)
    state = {"trial": None, "best": None}

    def progress(text: str) -> None:
        hooks.ping()
        best = f", best {state['best']:.3f}" if state["best"] is not None else ""
        hooks.status(f"{study_name}: {text}{best}")

    objective = Objective(cfg, data, study_name, TrialArtifacts(cfg, app_engine(cfg)),
                          device=device, progress=progress, should_stop=hooks.stop.is_set,
                          total_timesteps=total_timesteps)
    log.info("worker for study %s on %s: %d bars, training before %s, %d CV splits (%s)",
             study_name, device, len(bars), data.train_end, len(objective.splits), cfg.training.cv)
    hooks.ready()
    done_here = 0
    while not hooks.stop.is_set():
        target = target_of(study, cfg)
        if finished_count(study) >= target:
            log.info("study %s reached its target of %d finished trials", study_name, target)
            break
        try:
            state["best"] = study.best_value
        except ValueError:
            state["best"] = None
        hooks.ping()
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                       callbacks=[_requeue_interrupted(hooks.stop)])
        done_here += 1
        gc.collect()
    return done_here


class _NoTracebackOnStop(logging.Filter):
    """A trial cut short by a stop request is routine: Optuna's one-line warning stays, its
    traceback (which reads like a crash in the journal) goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], Interrupted):
            record.exc_info = None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoTracebackOnStop())


def _requeue_interrupted(stop: threading.Event):
    """A trial cut short by a stop request is FAIL (never left RUNNING); queue its parameters
    again so that the work is redone by whichever worker comes next."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if stop.is_set() and trial.state == TrialState.FAIL:
            study.enqueue_trial(trial.params, user_attrs={ATTR_RETRY_OF: trial_id(trial)},
                                skip_if_exists=False)
            log.info("trial %d interrupted; its parameters are queued again", trial.number)
    return callback


__all__ = ["run_worker", "open_study", "set_target", "target_of", "WorkerHooks", "Interrupted",
           "make_storage", "finished_count"]
