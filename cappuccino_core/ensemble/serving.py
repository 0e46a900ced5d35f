"""Serving an ensemble: every member with its own spec, combined into one set of weights.

Each member is loaded from the version directory with the checksum the manifest names
(`torch.load(weights_only=True)`), and keeps its own lookback and its own normalisation: no
member is ever fed another member's input scaling. Features are computed once per decision
(all members share the feature set, which selection checked) and normalised per member.
Target weights (assets then cash) are the mean of the members' deterministic weights, equal
or weighted by objective value (config `ensemble.weighting`); members of different action
spaces (rl/actions.py) serve together, a member that holds an asset counting its current weight.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..artifacts.model import ArtifactError, ModelSpec, load_artifact
from ..common.config import Config
from ..rl.agent import ActorCritic
from ..rl.backtest import vol_managed_weights
from ..rl.env import Normalisation, live_observation
from .manifest import ManifestError, read_manifest
from .selection import fit_problem

log = logging.getLogger(__name__)


@dataclass
class LoadedMember:
    trial_id: int
    number: int
    value: float
    agent: ActorCritic
    norm: Normalisation
    lookback: int
    spec: ModelSpec
    risk_differences: list[str] = field(default_factory=list)  # served under `warn`


@dataclass
class Ensemble:
    version: int
    study: str
    directory: Path
    members: list[LoadedMember]
    blend: np.ndarray  # one weight per member, summing to 1
    fallback: str | None = None  # cash | hold_equal_weight | hold_vol_managed: no members
    fallback_reason: str | None = None

    @classmethod
    def load(cls, directory: str | Path, cfg: Config) -> "Ensemble":
        """Load and check a whole version; raises ArtifactError if any member fails."""
        directory = Path(directory)
        try:
            manifest = read_manifest(directory)
        except (OSError, ManifestError) as e:
            raise ArtifactError(f"{directory}: manifest.json unreadable ({e})") from e
        if manifest.fallback:  # too few trials qualified: published plainly as such
            return cls(manifest.version, manifest.study, directory, [], np.zeros(0),
                       fallback=manifest.fallback, fallback_reason=manifest.reason)
        members = [load_member(directory / m.path, m.sha256, manifest.study,
                               m.trial_id, m.number, m.value, cfg)
                   for m in manifest.members]
        if not members:
            raise ArtifactError(f"{directory}: no members")
        return cls(manifest.version, manifest.study, directory, members,
                   blend_weights([m.value for m in members], cfg.ensemble.weighting))

    @classmethod
    def of_trial(cls, directory: str | Path, sha256: str, study: str, trial_id: int,
                 number: int, value: float, cfg: Config) -> "Ensemble":
        """One trial served alone (a deploy candidate, `cappuccino backtest --trial`)."""
        member = load_member(Path(directory), sha256, study, trial_id, number, value, cfg)
        return cls.of_member(member, study, Path(directory))

    @classmethod
    def of_member(cls, member: LoadedMember, study: str, directory: Path) -> "Ensemble":
        """A loaded member served alone (version 0: not a published version)."""
        return cls(0, study, directory, [member], np.ones(1))

    @property
    def max_lookback(self) -> int:
        return max((m.lookback for m in self.members), default=1)

    @torch.no_grad()
    def member_weights(self, features: np.ndarray, position_weights: np.ndarray,
                       cash_weight: float, cooldown: np.ndarray | None = None,
                       room: np.ndarray | None = None) -> np.ndarray:
        """Each member's target weights `[members, A+1]` (NaN: hold) from raw feature rows
        `[.., A, F]` (oldest first; at least `max_lookback` rows, the last one the newest
        closed bar), the portfolio's weights, each asset's share of its re-entry cooldown
        (default none) and its room to its stop (`env.stop_room`; default 1, far from it)."""
        if cooldown is None:
            cooldown = np.zeros(len(position_weights))
        if room is None:
            room = np.ones(len(position_weights))
        out = []
        for m in self.members:
            normalised = m.norm.apply(features[-m.lookback:]).astype(np.float32)
            obs = live_observation(normalised, m.lookback, position_weights, cash_weight,
                                   cooldown, room)
            out.append(m.agent.weights(obs)[0].numpy())
        return np.stack(out)

    def target_weights(self, features: np.ndarray, position_weights: np.ndarray,
                       cash_weight: float, cooldown: np.ndarray | None = None,
                       room: np.ndarray | None = None) -> np.ndarray:
        """The ensemble's target weights `[A+1]` (assets then cash). A fallback version holds
        cash, equal weights, or equal weights scaled to a volatility target (the environment's
        caps and cash reserve then apply)."""
        if self.fallback is not None:
            a = len(position_weights)
            if self.fallback == "cash":
                return np.concatenate([np.zeros(a), [1.0]])
            if self.fallback == "hold_vol_managed":
                return vol_managed_weights(features)
            return np.concatenate([np.full(a, 1.0 / a), [0.0]])
        return blend_targets(self.blend, self.member_weights(
            features, position_weights, cash_weight, cooldown, room),
            np.append(position_weights, cash_weight))


def load_member(directory: Path, sha256: str, study: str, trial_id: int, number: int,
                value: float, cfg: Config) -> LoadedMember:
    agent, spec = load_artifact(directory, expected_sha256=sha256)
    if spec.trial_id != trial_id or spec.study != study:
        raise ArtifactError(f"{directory}: spec names study {spec.study!r} trial id "
                            f"{spec.trial_id}, expected {study!r} {trial_id}")
    why, differences = fit_problem(spec, cfg)
    if why:
        raise ArtifactError(f"{directory}: {why}")
    if differences:
        log.warning("trial id %d served under other risk rules than it was trained with: %s",
                    trial_id, "; ".join(differences))
    return LoadedMember(trial_id, number, value, agent, spec.normalisation, spec.lookback, spec,
                        differences)


def blend_targets(blend: np.ndarray, members: np.ndarray, current: np.ndarray) -> np.ndarray:
    """The blend of the members' targets `[M, A+1]`: a member holding an asset (NaN, HOLD)
    counts with the asset's `current` weight, and the ensemble holds an asset (NaN) only when
    every member does. The cash weight is always a number."""
    target = blend @ np.where(np.isnan(members), current, members)
    target[:-1][np.isnan(members[:, :-1]).all(axis=0)] = np.nan
    return target


def blend_weights(values: list[float], weighting: str) -> np.ndarray:
    """Equal, or proportional to each member's value above the worst member's (all equal
    when the values are all the same)."""
    v = np.asarray(values, dtype=float)
    if weighting == "value":
        w = v - v.min()
        if w.sum() > 1e-12:
            return w / w.sum() * 0.5 + 0.5 / len(v)  # never drop a member to zero weight
    return np.full(len(v), 1.0 / len(v))


class EnsembleWatcher:
    """Follows `<state_dir>/ensembles/current` for a long-running reader (the trader).

    `poll()` looks where `current` points; when it points somewhere new, the new version is
    loaded and checked completely before it is handed out. A version that fails its checks is
    reported once and skipped, and the caller keeps the one it has. A signal (SIGHUP) only
    makes the caller poll sooner: a lost signal costs at most one poll interval."""

    def __init__(self, root: Path, cfg: Config):
        self.root, self.cfg = Path(root), cfg
        self.loaded_target: str | None = None
        self.rejected_target: str | None = None

    def _target(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def newest_loadable(self) -> tuple[Ensemble | None, list[str]]:
        """For a start: the current version if it loads, else the newest older one that does
        (a restart never leaves the trader with nothing while a good version is on disk);
        and one line per version skipped, saying why."""
        current = self._target()
        older = sorted((p.name for p in self.root.glob("v[0-9]*") if p.is_dir()), reverse=True)
        skipped = []
        for name in ([current] if current else []) + [n for n in older if n != current]:
            try:
                ensemble = Ensemble.load(self.root / name, self.cfg)
            except (ArtifactError, OSError, ValueError, KeyError) as e:
                skipped.append(f"ensemble {name} does not load: {e}")
                continue
            self.loaded_target = name
            if name != current:
                self.rejected_target = current
            return ensemble, skipped
        return None, skipped

    def poll(self) -> tuple[Ensemble | None, str | None]:
        """(new ensemble or None, error message or None)."""
        target = self._target()
        if target is None or target in (self.loaded_target, self.rejected_target):
            return None, None
        try:
            ensemble = Ensemble.load(self.root / target, self.cfg)
        except (ArtifactError, OSError, ValueError, KeyError) as e:
            self.rejected_target = target
            return None, f"ensemble {target} refused, keeping the current one: {e}"
        self.loaded_target = target
        return ensemble, None
