"""Publishing an ensemble version atomically, and telling the trader.

The layout under `<state_dir>/ensembles/` and its readers: manifest.py. A version is built
completely under a temporary name, fsynced, renamed to `vNNNNNN`, and only then made current
by renaming a new symlink over `current`. Readers follow `current` once and read a complete
version; a crash at any point leaves the previous version current, and the next sync cleans up
and succeeds. A lock file serialises concurrent syncs.

Telling the trader (works for the unprivileged service user, no systemctl or polkit needed):
the trader writes its PID to `<state_dir>/trader.pid`; after publishing, the sync sends it
SIGHUP (same user, so allowed). Independently the trader checks where `current` points on
every poll, so a lost signal delays a reload by at most one poll cycle.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..common.files import fsync_path
from ..storage.database import ensemble_versions, record_event
from ..storage.optuna_db import trial_count
from .manifest import (
    VERSION_PREFIX,
    Manifest,
    ManifestMember,
    current_dir,
    current_manifest,
    ensembles_dir,
    version_name,
    version_problems,
)
from .selection import (
    Selection,
    SelectionError,
    member_by_id,
    pinned_trial,
    select_members,
)

log = logging.getLogger(__name__)


class SyncLock:
    """An exclusive lock on `<root>/.sync.lock`; waits up to `timeout_s`."""

    def __init__(self, root: Path, timeout_s: float = 120.0):
        self.path, self.timeout_s = root / ".sync.lock", timeout_s

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another ensemble sync holds {self.path}")
                time.sleep(0.1)

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


@dataclass
class SyncResult:
    status: str  # published | unchanged | too_few | fallback
    version: int | None
    selection: Selection
    message: str


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_tree(directory: Path) -> None:
    """Every file and directory below `directory`, deepest first, then itself."""
    for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fsync_path(path)
    fsync_path(directory)


def next_version(root: Path, engine: Engine) -> int:
    on_disk = [int(p.name[1:]) for p in root.glob(f"{VERSION_PREFIX}[0-9]*") if p.name[1:].isdigit()]
    with engine.connect() as conn:
        in_db = conn.execute(sa.select(sa.func.max(ensemble_versions.c.version))).scalar() or 0
    return max(on_disk + [in_db]) + 1


def build_manifest(version: int, cfg: Config, sel: Selection) -> Manifest:
    e = cfg.ensemble
    return Manifest(
        version=version, study=sel.study, created_at=datetime.now(timezone.utc),
        selection={"rule": "top COMPLETE trials by value", "top_n": e.top_n,
                   "min_members": e.min_members, "min_value": e.min_value,
                   "max_similar": e.max_similar, "weighting": e.weighting,
                   "risk_mismatch": e.risk_mismatch},
        members=tuple(ManifestMember(
            trial_id=m.trial_id, number=m.number, value=m.value, sha256=m.sha256,
            path=f"members/{m.trial_id}", spec=m.spec, completed_at=m.completed_at,
            pinned=m.trial_id == sel.pinned, risk_differences=tuple(m.risk_differences))
            for m in sel.members))


def write_version(root: Path, version: int, manifest: Manifest, sel: Selection,
                  on_write: Callable[[Path], None] | None = None) -> Path:
    """Write a complete version directory; returns its final path (not yet current).
    `on_write(tmp)` runs once the members are in place, before the manifest (tests stop a
    publish there)."""
    tmp = root / f".tmp-{version_name(version)}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "members").mkdir(parents=True)
    for m in sel.members:
        dst = tmp / "members" / str(m.trial_id)
        dst.mkdir()
        for name in ("model.pt", "spec.json", "model.sha256"):
            _link_or_copy(m.artifact_dir / name, dst / name)
    if on_write is not None:
        on_write(tmp)
    (tmp / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2))
    _fsync_tree(tmp)
    final = root / version_name(version)
    os.rename(tmp, final)
    return final


def make_current(root: Path, version_dir: Path) -> None:
    """Point `current` at `version_dir` with one atomic rename of a fresh symlink."""
    tmp_link = root / f".current-{os.getpid()}"
    if tmp_link.is_symlink() or tmp_link.exists():
        tmp_link.unlink()
    os.symlink(version_dir.name, tmp_link)
    os.replace(tmp_link, root / "current")
    fsync_path(root)


def _record_version(engine: Engine, manifest: Manifest, path: Path) -> None:
    with engine.begin() as conn:
        exists = conn.execute(sa.select(ensemble_versions.c.version).where(
            ensemble_versions.c.version == manifest.version)).first()
        if not exists:
            conn.execute(ensemble_versions.insert().values(
                version=manifest.version, study=manifest.study, path=str(path),
                manifest=manifest.record()))


def _remove_leftovers(root: Path) -> None:
    """Temporary versions and links of interrupted syncs (call with the sync lock held)."""
    for tmp in list(root.glob(".tmp-*")) + list(root.glob(".current-*")):
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _cleanup(root: Path, keep: int) -> None:
    """Remove versions beyond the newest `keep` (leftovers of interrupted syncs went at the
    start of the sync)."""
    current = current_dir(root)
    versions = sorted(p for p in root.glob(f"{VERSION_PREFIX}[0-9]*") if p.is_dir())
    for old in versions[:-keep]:
        if current is None or old.resolve() != current.resolve():
            shutil.rmtree(old, ignore_errors=True)


def notify_trader(cfg: Config) -> bool:
    """SIGHUP to the trader whose PID is in `<state_dir>/trader.pid`; False when none runs."""
    pid_file = cfg.state_dir / "trader.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        log.info("told the trader (pid %d) to reload", pid)
        return True
    except (OSError, ValueError) as e:
        log.info("no trader to tell (%s); it will see the new version on its next poll", e)
        return False


def _apply_pin(cfg: Config, engine: Engine, sel: Selection) -> bool:
    """Honour the auto-deployer's last promotion: its trial joins the ensemble (`pin`) or is
    the ensemble (`alone`). Returns whether a pin applied."""
    trial_id = pinned_trial(engine, sel.study)
    if trial_id is None:
        return False
    member, why = member_by_id(engine, cfg, sel.study, trial_id)
    if member is None:
        log.warning("pinned trial id %d cannot be served (%s); ignored", trial_id, why)
        return False
    if cfg.deploy.promotion == "alone":
        sel.members = [member]
    elif all(m.trial_id != trial_id for m in sel.members):
        sel.members = [member] + sel.members[:cfg.ensemble.top_n - 1]
    sel.pinned = trial_id
    return True


def sync(cfg: Config, engine: Engine, study: str | None = None,
         on_write: Callable[[Path], None] | None = None) -> SyncResult:
    """Select the active study's members and publish a new version if the set changed.
    (What cappuccino-ensemble-sync runs; `on_write` as in `write_version`.)"""
    study = study or cfg.active_study
    if not study:
        raise SelectionError("no active study: write active_study.yaml "
                             "(cappuccino study activate NAME)")
    root = ensembles_dir(cfg)
    with SyncLock(root):
        _remove_leftovers(root)  # of syncs killed mid-publish, whatever this one decides
        sel = select_members(engine, cfg, study)
        pinned = _apply_pin(cfg, engine, sel)
        current = current_manifest(root)
        if current is not None and not current.broken:
            _record_version(engine, current, current_dir(root))  # repairs a crash before it
        if not sel.members and (cfg.ensemble.fallback == "keep_current"
                                or not trial_count(engine, study, ("COMPLETE",))):
            raise SelectionError(f"study {study!r} has no eligible trial "
                                 f"({len(sel.skipped)} skipped)")  # nothing to judge yet
        if len(sel.members) < cfg.ensemble.min_members and not pinned:
            return _too_few(cfg, engine, root, sel, current, on_write)
        if current is not None and current.study == study and current.key == sel.key \
                and not version_problems(current_dir(root)):  # a damaged one is republished
            return SyncResult("unchanged", current.version, sel,
                              f"ensemble v{current.version} is up to date")
        version = next_version(root, engine)
        manifest = build_manifest(version, cfg, sel)
        path = write_version(root, version, manifest, sel, on_write)
        make_current(root, path)
        _record_version(engine, manifest, path)
        _cleanup(root, cfg.ensemble.keep_versions)
        msg = (f"published ensemble v{version}: study {study}, {len(sel.members)} members, "
               f"values {sel.members[-1].value:.3f} .. {sel.members[0].value:.3f}")
        record_event(engine, "ensemble-sync", "info", "published", msg,
                     {"study": study, "version": version})
        _announce(cfg, f"ensemble v{version} published", msg, study, "info")
    notify_trader(cfg)
    return SyncResult("published", version, sel, msg)


def _announce(cfg: Config, title: str, msg: str, study: str, severity: str) -> None:
    from ..common.alerts import send_alert
    send_alert(cfg, title, msg, severity, "ensemble-version", study=study)


def _too_few(cfg: Config, engine: Engine, root: Path, sel: Selection, current: Manifest | None,
             on_write) -> SyncResult:
    """Fewer trials qualify than `ensemble.min_members`: keep the current version, or publish
    the configured fallback (a version without members that the trader serves as cash or as
    equal weights), said plainly in the events, `status` and the report."""
    e, study = cfg.ensemble, sel.study
    need = e.min_members - len(sel.members)
    why = (f"study {study}: {len(sel.members)} trial(s) qualify (CV value >= "
           f"{e.min_value}), ensemble.min_members is {e.min_members}: {need} more needed")
    data = {"study": study, "eligible": len(sel.members), "needed": need}
    if e.fallback == "keep_current" or (current is not None and current.study == study
                                        and current.fallback == e.fallback):
        msg = why + ("; the current ensemble stays" if e.fallback == "keep_current" else
                     f"; the trader stays on the fallback ({e.fallback})")
        record_event(engine, "ensemble-sync", "warning", "too_few_members", msg, data)
        return SyncResult("too_few", current and current.version, sel, msg)
    version = next_version(root, engine)
    nobody = dataclasses.replace(sel, members=[])
    manifest = dataclasses.replace(build_manifest(version, cfg, nobody), fallback=e.fallback,
                                   reason=why)
    path = write_version(root, version, manifest, nobody, on_write)
    make_current(root, path)
    _record_version(engine, manifest, path)
    _cleanup(root, e.keep_versions)
    msg = f"{why}: published v{version}, the fallback: {FALLBACKS[e.fallback]}"
    record_event(engine, "ensemble-sync", "warning", "fallback", msg, data | {"version": version})
    _announce(cfg, f"ensemble v{version} is the fallback ({e.fallback})", msg, study, "warning")
    notify_trader(cfg)
    return SyncResult("fallback", version, sel, msg)


FALLBACKS = {"cash": "the trader sells and holds cash",
             "hold_equal_weight": "the trader holds equal weights under the live risk rules",
             "hold_vol_managed": "the trader holds equal weights scaled to a volatility "
                                 "target, under the live risk rules"}


def sync_following(cfg: Config, engine: Engine, rounds: int = 3) -> SyncResult:
    """A sync that follows the active study even when it changes during the sync: systemd
    merges the path unit's start into a sync already running (the timer's, say), so a change
    made meanwhile would otherwise wait for the next timer. Syncs again (at most `rounds`
    times) until the study synced is the one active_study.yaml names."""
    from ..common.config import load_active_study
    result = sync(cfg, engine)
    for _ in range(rounds - 1):
        active = load_active_study(cfg.config_dir)
        if active == result.selection.study:
            break
        log.info("the active study changed to %s during the sync: syncing it", active)
        cfg = dataclasses.replace(cfg, active_study=active)
        result = sync(cfg, engine)
    return result
