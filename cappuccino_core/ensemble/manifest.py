"""The published ensemble versions on disk, read side: the typed `Manifest` (validated once, in
`Manifest.from_dict`) and the finders every reader uses (the trader, status, the monitor, the
report, `ensemble show`, the deployer). Writing them is `publish.py`'s.

Layout under `<state_dir>/ensembles/`:

    v000012/manifest.json          version, study, created_at, selection rule, members
    v000012/members/<trial_id>/    model.pt, spec.json, model.sha256 (hard links, else copies)
    current -> v000012             a symlink, replaced in one atomic rename
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..artifacts.model import ArtifactError, ModelSpec, read_spec, sha256_file
from ..common.config import Config
from ..common.errors import CappuccinoError

VERSION_PREFIX = "v"
# Keys of manifests written by earlier releases, copies of spec fields: read past, never used.
LEGACY_MEMBER_KEYS = frozenset({"params", "trailing_stop_pct"})


class ManifestError(CappuccinoError):
    """A manifest that does not say what a version holds (damaged, or not a manifest)."""
    label = "ensemble manifest"


@dataclass(frozen=True)
class ManifestMember:
    trial_id: int
    number: int
    value: float
    sha256: str  # of model.pt
    path: str  # relative to the version directory
    spec: ModelSpec
    completed_at: str | None = None
    pinned: bool = False
    risk_differences: tuple[str, ...] = ()  # against the configuration at publish time

    def to_dict(self) -> dict:
        return {"trial_id": self.trial_id, "number": self.number, "value": self.value,
                "sha256": self.sha256, "completed_at": self.completed_at, "pinned": self.pinned,
                "risk_differences": list(self.risk_differences), "path": self.path,
                "spec": self.spec.to_dict()}


@dataclass(frozen=True)
class Manifest:
    version: int
    study: str | None
    created_at: datetime
    members: tuple[ManifestMember, ...] = ()
    selection: dict = field(default_factory=dict)
    fallback: str | None = None  # cash | hold_equal_weight | hold_vol_managed: no members
    reason: str | None = None  # why the fallback
    broken: tuple[str, ...] = ()  # why a manifest on disk could not be read

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest.json") -> "Manifest":
        """Validate a manifest read from disk; ManifestError names what is wrong."""
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: not a JSON object")
        try:
            members = tuple(_member(m, f"{where}: member {i}")
                            for i, m in enumerate(d.get("members", [])))
            return cls(version=int(d["version"]), study=d["study"],
                       created_at=datetime.fromisoformat(d["created_at"]), members=members,
                       selection=dict(d.get("selection") or {}), fallback=d.get("fallback"),
                       reason=d.get("reason"))
        except (KeyError, TypeError, ValueError, ArtifactError) as e:
            raise ManifestError(f"{where}: {e}") from e

    def to_dict(self) -> dict:
        d = {"version": self.version, "study": self.study,
             "created_at": self.created_at.isoformat(timespec="seconds"),
             "selection": self.selection, "members": [m.to_dict() for m in self.members]}
        if self.fallback:
            d |= {"fallback": self.fallback, "reason": self.reason}
        return d

    def record(self) -> dict:
        """What the database keeps of it (`cappuccino_ensemble_versions.manifest`): no specs."""
        d = self.to_dict()
        d["members"] = [{k: v for k, v in m.items() if k != "spec"} for m in d["members"]]
        return d

    @property
    def key(self) -> list[tuple[int, str]]:
        """What makes two versions the same ensemble: their members' trials and weights."""
        return sorted((m.trial_id, m.sha256) for m in self.members)

    def age_hours(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(timezone.utc)) - self.created_at).total_seconds() / 3600


def _member(m: Any, where: str) -> ManifestMember:
    if not isinstance(m, dict):
        raise ValueError("not a JSON object")
    known = {"trial_id", "number", "value", "sha256", "path", "spec", "completed_at", "pinned",
             "risk_differences"}
    unknown = set(m) - known - LEGACY_MEMBER_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    return ManifestMember(
        trial_id=int(m["trial_id"]), number=int(m["number"]), value=float(m["value"]),
        sha256=str(m["sha256"]), path=str(m["path"]),
        spec=ModelSpec.from_dict(m["spec"], f"{where} spec"),
        completed_at=m.get("completed_at"), pinned=bool(m.get("pinned", False)),
        risk_differences=tuple(m.get("risk_differences", ())))


def ensembles_dir(cfg: Config) -> Path:
    return cfg.state_dir / "ensembles"


def version_name(version: int) -> str:
    return f"{VERSION_PREFIX}{version:06d}"


def current_dir(root: Path) -> Path | None:
    """The directory `current` points to, or None before the first publish."""
    link = root / "current"
    if not link.is_symlink():
        return None
    return root / os.readlink(link)


def read_manifest(directory: Path) -> Manifest:
    path = directory / "manifest.json"
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ManifestError(f"{path}: not JSON ({e})") from e
    return Manifest.from_dict(data, str(path))


def current_manifest(root: Path) -> Manifest | None:
    """The current version's manifest; None before the first publish. A manifest that cannot
    be read (truncated, damaged) stands in as a version with no members whose `broken` says
    why: every reader shows it broken, and the next sync publishes a fresh version."""
    d = current_dir(root)
    if d is None or not (d / "manifest.json").exists():
        return None
    try:
        return read_manifest(d)
    except (OSError, ManifestError) as e:
        created = datetime.fromtimestamp((d / "manifest.json").stat().st_mtime, timezone.utc)
        number = d.name.removeprefix(VERSION_PREFIX)
        return Manifest(version=int(number) if number.isdigit() else 0, study=None,
                        created_at=created, broken=(f"manifest unreadable ({e})",))


def version_problems(directory: Path) -> list[str]:
    """What is wrong with a published version on disk: an unreadable manifest, a member's file
    missing, a checksum that differs, a spec that does not parse. [] when it is whole. (No
    torch: cheap enough for `status`; whether the weights load, the trader reports.)"""
    try:
        manifest = read_manifest(directory)
    except (OSError, ManifestError) as e:
        return [f"manifest unreadable ({e})"]
    problems = []
    for m in manifest.members:
        member = directory / m.path
        try:
            if sha256_file(member / "model.pt") != m.sha256:
                problems.append(f"trial id {m.trial_id}: model.pt checksum differs")
            read_spec(member)
        except (OSError, ArtifactError) as e:
            problems.append(f"trial id {m.trial_id}: {e}")
    return problems


def venue_warnings(cfg) -> list[str]:
    """Models trained on one venue's bars and traded on another's, said with what it means."""
    from ..data import venue
    try:
        manifest = current_manifest(ensembles_dir(cfg))
    except OSError:
        return []
    here = venue(cfg)
    trained = {m.spec.trained_on.get("venue") for m in (manifest.members if manifest else ())
               } - {None, here}
    return [f"the current ensemble was trained on {v}, and trades on {here}: prices differ "
            "between venues and quote currencies (USDT is not USD), and so do liquidity and "
            "quiet hours; expect live results to differ from its backtests (`cappuccino "
            "reconcile` shows by how much, bar by bar)" for v in sorted(trained)]
