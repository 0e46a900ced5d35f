"""Selecting an ensemble's members: the active study's best COMPLETE trials that can be served.

The ranking reads Optuna's schema directly, read-only, with one indexed query (Optuna's
`get_trials()` loads every trial of a study, seconds at 10,000 trials). Trials are identified
by their storage-wide trial id, never by number: numbers repeat across studies.

A trial is eligible when its artifact exists, its checksum matches what the trial recorded,
and its spec fits the trading configuration (same symbols in the same order, same timeframe,
same feature set). Every skipped trial is reported with its reason.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..config import Config
from ..data.features import FEATURE_SET
from ..training.artifacts import ArtifactError, read_spec, sha256_file

log = logging.getLogger(__name__)

_RANKED = sa.text("""
    SELECT t.trial_id, t.number, v.value, t.datetime_complete
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
    WHERE s.study_name = :study AND t.state = 'COMPLETE'
      AND (:min_value IS NULL OR v.value >= :min_value)
    ORDER BY v.value DESC, t.trial_id
    LIMIT :limit OFFSET :offset
""")

_ATTRS = sa.text("""
    SELECT trial_id, key, value_json FROM trial_user_attributes
    WHERE key IN ('artifact_dir', 'sha256') AND trial_id IN :ids
""").bindparams(sa.bindparam("ids", expanding=True))

_STUDY = sa.text("SELECT study_id FROM studies WHERE study_name = :study")

_ONE = sa.text("""
    SELECT t.trial_id, t.number, v.value, t.datetime_complete
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
    WHERE s.study_name = :study AND t.trial_id = :trial_id AND t.state = 'COMPLETE'
""")


class SelectionError(Exception):
    """The study cannot give an ensemble (unknown or without eligible trials)."""


@dataclass
class Member:
    trial_id: int
    number: int
    value: float
    artifact_dir: Path
    sha256: str
    spec: dict
    completed_at: str | None = None  # ISO time, UTC


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


def spec_mismatch(spec: dict, cfg: Config) -> str | None:
    """Why a model's spec does not fit the trading configuration, or None."""
    if spec.get("symbols") != list(cfg.data.symbols):
        return f"symbols {spec.get('symbols')} != configured {list(cfg.data.symbols)}"
    if spec.get("timeframe") != cfg.data.timeframe:
        return f"timeframe {spec.get('timeframe')} != configured {cfg.data.timeframe}"
    if spec.get("feature_set") != FEATURE_SET or spec.get("feature_set") != cfg.data.feature_set:
        return f"feature set {spec.get('feature_set')} != {cfg.data.feature_set}"
    return None


def check_member(trial_id: int, study: str, attrs: dict, cfg: Config) -> tuple[dict | None, str]:
    """(spec, "") for an eligible trial, else (None, reason)."""
    directory, digest = attrs.get("artifact_dir"), attrs.get("sha256")
    if not directory or not digest:
        return None, "no artifact recorded"
    path = Path(directory)
    if not (path / "model.pt").exists():
        return None, f"artifact missing at {path}"
    actual = sha256_file(path / "model.pt")
    if actual != digest:
        return None, f"checksum {actual[:12]} != recorded {digest[:12]} (corrupted or replaced)"
    try:
        spec = read_spec(path)
    except ArtifactError as e:
        return None, str(e)
    if spec.get("study") != study or spec.get("trial_id") != trial_id:
        return None, (f"artifact belongs to study {spec.get('study')!r} trial id "
                      f"{spec.get('trial_id')}, not to this trial")
    if spec.get("sha256") != digest:
        return None, "spec checksum differs from the trial's"
    why = spec_mismatch(spec, cfg)
    return (None, why) if why else (spec, "")


def select_members(engine: Engine, cfg: Config, study: str, top_n: int | None = None,
                   min_value: float | None = None, max_similar: int | None = None) -> Selection:
    """The best `top_n` eligible COMPLETE trials of `study`, best first."""
    top_n = top_n or cfg.ensemble.top_n
    min_value = cfg.ensemble.min_value if min_value is None else min_value
    max_similar = max_similar or cfg.ensemble.max_similar
    selection = Selection(study, [])
    with engine.connect() as conn:
        if conn.execute(_STUDY, {"study": study}).first() is None:
            raise SelectionError(f"study {study!r} does not exist in the storage")
        offset, page = 0, max(3 * top_n, 30)
        while len(selection.members) < top_n:
            rows = conn.execute(_RANKED, {"study": study, "min_value": min_value,
                                          "limit": page, "offset": offset}).all()
            if not rows:
                break
            offset += page
            attrs: dict[int, dict] = {}
            for trial_id, key, value_json in conn.execute(_ATTRS, {"ids": [r[0] for r in rows]}):
                attrs.setdefault(trial_id, {})[key] = json.loads(value_json)
            for trial_id, number, value, completed in rows:
                spec, why = check_member(trial_id, study, attrs.get(trial_id, {}), cfg)
                if spec is not None and max_similar and \
                        _similar_count(spec, selection.members) >= max_similar:
                    spec, why = None, f"more than {max_similar} members with these parameters"
                if spec is None:
                    selection.skipped.append((trial_id, number, why))
                    log.info("study %s trial %d (id %d) skipped: %s", study, number, trial_id, why)
                    continue
                selection.members.append(Member(
                    trial_id, number, value, Path(attrs[trial_id]["artifact_dir"]),
                    attrs[trial_id]["sha256"], spec,
                    _utc_iso(completed)))
                if len(selection.members) == top_n:
                    break
    return selection


def pinned_trial(engine: Engine, study: str) -> int | None:
    """The trial the auto-deployer's last promotion pinned for this study, if any."""
    from ..storage import deploy_decisions
    with engine.connect() as conn:
        return conn.execute(sa.select(deploy_decisions.c.candidate_trial_id).where(
            deploy_decisions.c.study == study, deploy_decisions.c.promoted.is_(True))
            .order_by(deploy_decisions.c.id.desc()).limit(1)).scalar()


def member_by_id(engine: Engine, cfg: Config, study: str, trial_id: int) -> tuple[Member | None, str]:
    """One trial of `study` as a member, if it is eligible; else (None, why)."""
    with engine.connect() as conn:
        row = conn.execute(_ONE, {"study": study, "trial_id": trial_id}).first()
        if row is None:
            return None, f"trial id {trial_id} is not a COMPLETE trial of {study!r}"
        attrs = {key: json.loads(v) for _, key, v in conn.execute(_ATTRS, {"ids": [trial_id]})}
    spec, why = check_member(trial_id, study, attrs, cfg)
    if spec is None:
        return None, why
    return Member(trial_id, row.number, row.value, Path(attrs["artifact_dir"]), attrs["sha256"],
                  spec, _utc_iso(row.datetime_complete)), ""


def _utc_iso(value) -> str | None:
    """Optuna stores naive UTC times (SQLite hands them back as text)."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).isoformat()


def _similar_count(spec: dict, members: list[Member], rel_tol: float = 0.05) -> int:
    """Members whose hyperparameters are all within 5% (numbers) or equal (others)."""
    def close(a, b):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return abs(a - b) <= rel_tol * max(abs(a), abs(b), 1e-12)
        return a == b
    mine = spec.get("hyperparameters", {})
    return sum(all(close(v, m.spec.get("hyperparameters", {}).get(k)) for k, v in mine.items())
               for m in members)
