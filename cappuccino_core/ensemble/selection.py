"""Selecting an ensemble's members: the active study's best COMPLETE trials that can be served.

The ranking is one indexed query over Optuna's tables (`optuna_db.ranked_trials`). Trials are
identified by their storage-wide trial id, never by number: numbers repeat across studies.

A trial is eligible when its model's upload to the artifact store is recorded as complete
(`artifact_store.py`), the downloaded archive matches the recorded checksum, the weights match
their spec's, it loads (`torch.load(weights_only=True)` and the network's shapes: a matching checksum does not
prove that), its spec fits the trading configuration (same symbols in the same order, same timeframe, same
feature set), and it was trained under the live risk rules and costs (`ensemble.risk_mismatch:
refuse`; with `warn` it is served and the differences are logged and shown). Every skipped
trial is reported with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..artifacts.model import ArtifactError, ModelSpec
from ..artifacts.store import StoredArtifact, TrialArtifacts, records
from ..common.config import Config
from ..common.errors import CappuccinoError
from ..storage.optuna_db import (
    ATTR_POLICY,
    complete_trial,
    ranked_trials,
    study_exists,
    trial_attrs,
)

log = logging.getLogger(__name__)


class SelectionError(CappuccinoError):
    """The study cannot give an ensemble (unknown or without eligible trials)."""
    label = "ensemble selection"


@dataclass
class Member:
    trial_id: int
    number: int
    value: float
    artifact_dir: Path
    sha256: str
    spec: ModelSpec
    completed_at: str | None = None  # ISO time, UTC
    risk_differences: list[str] = field(default_factory=list)  # served under `warn`


@dataclass
class Selection:
    study: str
    members: list[Member]
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # (trial id, number, why)
    pinned: int | None = None  # trial id the auto-deployer pinned into this selection

    @property
    def key(self) -> list[tuple[int, str]]:
        """What identifies the set: trial ids and checksums."""
        return sorted((m.trial_id, m.sha256) for m in self.members)


def fit_problem(spec: ModelSpec, cfg: Config) -> tuple[str | None, list[str]]:
    """(why the model must not be served under `cfg`, or None; the risk differences that are
    tolerated under `ensemble.risk_mismatch: warn`)."""
    why = spec.mismatch(cfg)
    if why:
        return why, []
    differences = spec.risk_differences(cfg)
    if differences and cfg.ensemble.risk_mismatch == "refuse":
        return ("trained under other risk rules: " + "; ".join(differences)
                + " (ensemble.risk_mismatch: refuse)"), []
    return None, differences


def check_member(trial_id: int, study: str, stored: StoredArtifact | None, cfg: Config,
                 artifacts: TrialArtifacts) -> tuple[Member | None, str]:
    """(a member without its ranking fields filled, "") for an eligible trial, else (None, why)."""
    if stored is None:
        return None, ("no complete model upload recorded (a model an earlier release left on "
                      "local disk is imported by `cappuccino artifacts migrate`)")
    try:  # the archive's checksum, the weights' (against the spec), and the weights loading:
        # a checksum can match weights that still cannot load (truncated, a pickle payload)
        path = artifacts.local_copy(stored)
        from ..artifacts.model import load_artifact
        _, spec = load_artifact(path)
    except ArtifactError as e:
        return None, f"does not load: {e}"
    digest = spec.sha256
    if spec.study != study or spec.trial_id != trial_id:
        return None, (f"artifact belongs to study {spec.study!r} trial id {spec.trial_id}, "
                      "not to this trial")
    why, differences = fit_problem(spec, cfg)
    if why:
        return None, why
    if differences:
        log.warning("study %s trial id %d served despite other risk rules: %s", study,
                    trial_id, "; ".join(differences))
    return Member(trial_id, spec.trial_number, spec.value, path, digest, spec,
                  risk_differences=differences), ""


def select_members(engine: Engine, cfg: Config, study: str, top_n: int | None = None,
                   min_value: float | None = None, max_similar: int | None = None) -> Selection:
    """The best `top_n` eligible COMPLETE trials of `study`, best first."""
    top_n = top_n or cfg.ensemble.top_n
    min_value = cfg.ensemble.min_value if min_value is None else min_value
    max_similar = max_similar or cfg.ensemble.max_similar
    selection = Selection(study, [])
    artifacts = TrialArtifacts(cfg, engine)
    with engine.connect() as conn:
        if not study_exists(conn, study):
            raise SelectionError(f"study {study!r} does not exist in the storage")
        offset, page = 0, max(3 * top_n, 30)
        while len(selection.members) < top_n:
            rows = ranked_trials(conn, study, min_value, page, offset)
            if not rows:
                break
            offset += page
            stored = records(conn, [r[0] for r in rows])
            flat = _near_constant(conn, [r[0] for r in rows]) \
                if cfg.ensemble.near_constant == "refuse" else set()
            for trial_id, number, value, completed in rows:
                member, why = check_member(trial_id, study, stored.get(trial_id), cfg, artifacts)
                if member is not None and trial_id in flat:
                    member, why = None, NEAR_CONSTANT_WHY
                if member is not None and max_similar and \
                        _similar_count(member.spec, selection.members) >= max_similar:
                    member, why = None, f"more than {max_similar} members with these parameters"
                if member is None:
                    selection.skipped.append((trial_id, number, why))
                    log.info("study %s trial %d (id %d) skipped: %s", study, number, trial_id, why)
                    continue
                member.number, member.value = number, value
                member.completed_at = _utc_iso(completed)
                selection.members.append(member)
                if len(selection.members) == top_n:
                    break
    return selection


NEAR_CONSTANT_WHY = ("near-constant policy (it holds about one portfolio whatever the market "
                     "does): holding is cheaper served as the fallback")


def _near_constant(conn, trial_ids: list[int]) -> set[int]:
    """The trials training flagged near-constant (`policy.near_constant`, objective.py)."""
    attrs = trial_attrs(conn, trial_ids, (ATTR_POLICY,))
    return {t for t, a in attrs.items() if (a.get(ATTR_POLICY) or {}).get("near_constant")}


def pinned_trial(engine: Engine, study: str) -> int | None:
    """The trial the auto-deployer's last promotion pinned for this study, if any."""
    from ..storage.database import deploy_decisions
    with engine.connect() as conn:
        return conn.execute(sa.select(deploy_decisions.c.candidate_trial_id).where(
            deploy_decisions.c.study == study, deploy_decisions.c.promoted.is_(True))
            .order_by(deploy_decisions.c.id.desc()).limit(1)).scalar()


def member_by_id(engine: Engine, cfg: Config, study: str, trial_id: int) -> tuple[Member | None, str]:
    """One trial of `study` as a member, if it is eligible; else (None, why)."""
    with engine.connect() as conn:
        row = complete_trial(conn, study, trial_id)
        if row is None:
            return None, (f"trial id {trial_id} is not a COMPLETE trial of {study!r}" if study
                          else f"trial id {trial_id}: no study to look in (no active study: "
                               "pass --study)")
        stored = records(conn, [trial_id]).get(trial_id)
    member, why = check_member(trial_id, study, stored, cfg, TrialArtifacts(cfg, engine))
    if member is None:
        return None, why
    member.number, member.value = row.number, row.value
    member.completed_at = _utc_iso(row.datetime_complete)
    return member, ""


def _utc_iso(value) -> str | None:
    """Optuna stores naive UTC times (SQLite hands them back as text)."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).isoformat()


def _similar_count(spec: ModelSpec, members: list[Member], rel_tol: float = 0.05) -> int:
    """Members whose hyperparameters are all within 5% (numbers) or equal (others)."""
    def close(a, b):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return abs(a - b) <= rel_tol * max(abs(a), abs(b), 1e-12)
        return a == b
    mine = spec.hyperparameters
    return sum(all(close(v, m.spec.hyperparameters.get(k)) for k, v in mine.items())
               for m in members)
