"""Making studies with real trials and real artifacts quickly, for the ensemble tests."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import optuna

from cappuccino_core.rl.actions import n_outputs
from cappuccino_core.rl.agent import ActorCritic
from cappuccino_core.data import venue
from cappuccino_core.data.features import feature_names
from cappuccino_core.rl.env import EnvSettings, observation_size
from cappuccino_core.artifacts.store import TrialArtifacts, records
from cappuccino_core.artifacts.model import ModelSpec, NetworkSpec, save_artifact
from cappuccino_core.rl.env import Normalisation
from cappuccino_core.storage.database import app_engine

_ENGINES: dict[str, object] = {}


def trial_artifacts(cfg) -> TrialArtifacts:
    """The configured artifact store, as trainers and readers use it (one engine per database)."""
    if cfg.storage_url not in _ENGINES:
        _ENGINES[cfg.storage_url] = app_engine(cfg)
    return TrialArtifacts(cfg, _ENGINES[cfg.storage_url])


def stored(cfg, trial):
    """The record of a trial's complete upload."""
    artifacts = trial_artifacts(cfg)
    with artifacts.engine.connect() as conn:
        return records(conn, [trial._trial_id])[trial._trial_id]


def stored_file(cfg, trial) -> Path:
    """Where the filesystem store keeps a trial's archive (tests damage it there)."""
    return Path(cfg.artifacts.path or cfg.state_dir / "artifacts") / stored(cfg, trial).artifact_id


def local_model(cfg, trial) -> Path:
    """The trial's model, downloaded, checked and unpacked as a reader would."""
    return trial_artifacts(cfg).local_copy(stored(cfg, trial))


def add_trial(study: optuna.Study, cfg, value: float, lookback: int = 1, seed: int = 0,
              symbols: list[str] | None = None, shift: float = 0.0, hidden: int = 16,
              layers: int = 1, band: float = 0.0, agent=None, normalisation=None,
              splits: list[float] | None = None, near_constant: bool = False,
              action_space: str = "weights", **risk) -> optuna.trial.FrozenTrial:
    """A COMPLETE trial with a small real policy saved as its artifact, trained (as far as its
    spec says) under the configured risk rules, or under `risk` overrides of them, acting in
    `action_space`."""
    symbols = list(symbols or cfg.data.symbols)
    trial = study.ask()
    A, F = len(symbols), len(feature_names(cfg.data.feature_set))
    import torch
    torch.manual_seed(seed)
    env = EnvSettings.from_config(cfg, lookback=lookback, min_rebalance_weight=band,
                                  action_space=action_space, **risk)
    if agent is None:
        agent = ActorCritic(observation_size(A, F, lookback), n_outputs(action_space, A),
                            hidden, layers, -0.5, settings=env, n_assets=A)
    rng = np.random.default_rng(seed)
    spec = ModelSpec(
        study=study.study_name, trial_id=trial._trial_id, trial_number=trial.number,
        value=value, code_version="test", symbols=tuple(symbols),
        timeframe=cfg.data.timeframe, lookback=lookback, feature_set=cfg.data.feature_set,
        feature_names=feature_names(cfg.data.feature_set),
        normalisation=Normalisation.from_dict(normalisation or {
            "mean": (rng.normal(size=(A, F)) * 0.01 + shift).tolist(),
            "std": (1 + rng.random((A, F))).tolist()}),
        hyperparameters={"learning_rate": 1e-4 * (1 + seed), "gamma": 0.9, "lookback": lookback},
        env=env,
        network=NetworkSpec(observation_size(A, F, lookback), n_outputs(action_space, A),
                            hidden, layers),
        seed=seed, trained_on={"venue": venue(cfg)})
    with tempfile.TemporaryDirectory() as tmp:
        digest = save_artifact(Path(tmp) / "model", agent, spec)
        upload = trial_artifacts(cfg).upload_directory(Path(tmp) / "model", study.study_name,
                                                       trial._trial_id, trial)
    trial.set_user_attr("artifact_id", upload.artifact_id)
    trial.set_user_attr("sha256", digest)
    if splits is not None:
        trial.set_user_attr("splits", [{"excess_sharpe": x} for x in splits])
    trial.set_user_attr("policy", {"spread_time": 0.001 if near_constant else 0.05,
                                   "near_constant": near_constant})
    study.tell(trial, value)
    return study.trials[-1]
