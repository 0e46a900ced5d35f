"""Where trial models live: an Optuna artifact store that every host reaches.

`artifacts.store` picks it: `filesystem` (the embedded default, `<state_dir>/artifacts`, or a
shared mount), `s3` (Optuna's `Boto3ArtifactStore` on any S3-compatible service) or `database`
(`DatabaseArtifactStore`: chunks in a table of the storage database, so that a cluster needs
nothing but PostgreSQL).

A trial's model is one tar archive: the artifact directory of `artifacts.py` (model.pt,
spec.json, model.sha256) and the trial's TensorBoard events. The trainer uploads it with
`optuna.artifacts.upload_artifact` (the dashboard's Artifacts pane lists it) and only then
records it in `cappuccino_trial_artifacts` with the archive's sha256. That row is what makes a
trial eligible: Optuna writes its artifact note before the bytes, so a trainer killed
mid-upload leaves a note and no row, and its partial model is never served.

Readers (ensemble sync, deployer, backtest) download the archive, check its sha256 against the
row, and unpack it into a local cache keyed by that checksum (`<state_dir>/artifact-cache`); a
cached copy whose weights no longer match their spec is fetched again.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import optuna
import sqlalchemy as sa
from optuna.artifacts.exceptions import ArtifactNotFound
from sqlalchemy.engine import Connection, Engine

from ..common.files import fsync_path
from ..storage.database import artifact_chunks, trial_artifacts
from .model import ArtifactError, read_spec, sha256_file

log = logging.getLogger(__name__)

MODEL_FILES = ("model.pt", "spec.json", "model.sha256")
EVENTS_DIR = "tensorboard"  # the trial's PPO diagnostics (tb_events.py)
ARCHIVE_MIMETYPE = "application/x-tar"


class DatabaseArtifactStore:
    """Optuna's artifact-store protocol (`open_reader`, `write`, `remove`) on a table of the
    storage database. A write is one transaction: a reader sees all of an artifact or none."""

    CHUNK_BYTES = 4 << 20

    def __init__(self, engine: Engine):
        self.engine = engine

    def open_reader(self, artifact_id: str) -> BinaryIO:
        out = tempfile.SpooledTemporaryFile(max_size=64 << 20)
        found = False
        with self.engine.connect() as conn:
            for (data,) in conn.execute(sa.select(artifact_chunks.c.data).where(
                    artifact_chunks.c.artifact_id == artifact_id).order_by(artifact_chunks.c.seq)):
                out.write(data)
                found = True
        if not found:
            out.close()
            raise ArtifactNotFound(f"artifact {artifact_id} is not in the database store")
        out.seek(0)
        return out

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        with self.engine.begin() as conn:
            conn.execute(artifact_chunks.delete().where(
                artifact_chunks.c.artifact_id == artifact_id))
            seq = 0
            while True:
                block = content_body.read(self.CHUNK_BYTES)
                if not block and seq:
                    break
                conn.execute(artifact_chunks.insert().values(artifact_id=artifact_id, seq=seq,
                                                             data=block))
                seq += 1
                if not block:
                    break

    def remove(self, artifact_id: str) -> None:
        with self.engine.begin() as conn:
            gone = conn.execute(artifact_chunks.delete().where(
                artifact_chunks.c.artifact_id == artifact_id)).rowcount
        if not gone:
            raise ArtifactNotFound(f"artifact {artifact_id} is not in the database store")


def make_store(cfg, engine: Engine):
    """The configured Optuna artifact store."""
    a = cfg.artifacts
    if a.store == "database":
        return DatabaseArtifactStore(engine)
    if a.store == "s3":
        try:
            import boto3
        except ImportError as e:
            from ..common.config import ConfigError
            raise ConfigError("cappuccino.yaml", "artifacts.store", "s3",
                              "a store whose client is installed (the s3 store needs boto3: "
                              "pip install 'cappuccino[s3]')") from e
        from optuna.artifacts import Boto3ArtifactStore
        client = boto3.client("s3", endpoint_url=a.s3_endpoint_url, region_name=a.s3_region)
        return Boto3ArtifactStore(a.s3_bucket, client=client)
    from optuna.artifacts import FileSystemArtifactStore
    root = Path(a.path or cfg.state_dir / "artifacts")
    root.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(root)


@dataclass(frozen=True)
class StoredArtifact:
    trial_id: int
    study: str
    artifact_id: str
    store: str
    sha256: str  # of the archive
    size: int


def records(conn: Connection, trial_ids: list[int]) -> dict[int, StoredArtifact]:
    """The complete uploads of these trials, by trial id."""
    if not trial_ids:
        return {}
    t = trial_artifacts
    rows = conn.execute(sa.select(t.c.trial_id, t.c.study, t.c.artifact_id, t.c.store,
                                  t.c.sha256, t.c.size).where(t.c.trial_id.in_(trial_ids)))
    return {r.trial_id: StoredArtifact(*r) for r in rows}


def _pack(directory: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)


def _unpack(archive: Path, into: Path) -> None:
    """Regular files only, named as an artifact names them: an archive is untrusted input."""
    into.mkdir()
    with tarfile.open(archive, "r") as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            allowed = member.name in MODEL_FILES or (
                len(name.parts) == 2 and name.parts[0] == EVENTS_DIR
                and not name.parts[1].startswith("."))
            if not member.isfile() or not allowed:
                raise ArtifactError(f"archive holds {member.name!r}, which no artifact has")
            target = into / name
            target.parent.mkdir(exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _whole(directory: Path) -> bool:
    """The unpacked model's weights still match its spec."""
    try:
        spec = read_spec(directory)
        return sha256_file(directory / "model.pt") == spec.sha256
    except (OSError, ArtifactError):
        return False


class TrialArtifacts:
    """The configured store, the record of complete uploads, and this host's cache."""

    def __init__(self, cfg, engine: Engine):
        self.cfg, self.engine = cfg, engine
        self.kind = cfg.artifacts.store
        self.store = make_store(cfg, engine)
        self.cache = cfg.artifact_cache_dir

    # --- writing (trainers, `artifacts migrate`) ----------------------------------------------

    def upload_directory(self, directory: Path, study: str, trial_id: int,
                         trial: optuna.Trial | None = None) -> StoredArtifact:
        """Pack an artifact directory, upload it, then record it. With `trial`, through
        Optuna's `upload_artifact` (so the dashboard lists it); without, straight to the store
        (a finished trial can no longer take Optuna's note)."""
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=staging_dir(self.cfg)))
        try:
            archive = staging / f"trial-{trial_id}-model.tar"
            _pack(Path(directory), archive)
            digest, size = sha256_file(archive), archive.stat().st_size
            if trial is not None:
                artifact_id = optuna.artifacts.upload_artifact(
                    artifact_store=self.store, file_path=str(archive), study_or_trial=trial,
                    mimetype=ARCHIVE_MIMETYPE)
            else:
                artifact_id = str(uuid.uuid4())
                with open(archive, "rb") as f:
                    self.store.write(artifact_id, f)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = StoredArtifact(trial_id, study, artifact_id, self.kind, digest, size)
        with self.engine.begin() as conn:
            conn.execute(trial_artifacts.delete().where(trial_artifacts.c.trial_id == trial_id))
            conn.execute(trial_artifacts.insert().values(
                trial_id=trial_id, study=study, artifact_id=artifact_id, store=self.kind,
                sha256=digest, size=size))
        log.info("trial id %d: model uploaded to the %s store (%d bytes, sha256 %s)", trial_id,
                 self.kind, size, digest[:12])
        return stored

    # --- reading (ensemble sync, deployer, backtest) --------------------------------------------

    def local_copy(self, stored: StoredArtifact) -> Path:
        """The artifact unpacked in this host's cache, downloaded and checked if need be.
        Raises ArtifactError when the store has no such artifact or its bytes differ."""
        final = self.cache / stored.sha256
        if final.is_dir():
            if _whole(final):
                return final
            log.warning("cached model %s is damaged: fetching it again", final)
            shutil.rmtree(final, ignore_errors=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache))
        try:
            archive = tmp / "model.tar"
            try:
                optuna.artifacts.download_artifact(artifact_store=self.store,
                                                   file_path=str(archive),
                                                   artifact_id=stored.artifact_id)
            except ArtifactNotFound as e:
                raise ArtifactError(f"artifact {stored.artifact_id} is missing from the "
                                    f"{stored.store} store") from e
            digest = sha256_file(archive)
            if digest != stored.sha256:
                raise ArtifactError(f"artifact {stored.artifact_id}: downloaded checksum "
                                    f"{digest[:12]} does not match the recorded "
                                    f"{stored.sha256[:12]}")
            try:
                _unpack(archive, tmp / "model")
            except (tarfile.TarError, OSError) as e:
                raise ArtifactError(f"artifact {stored.artifact_id}: not an archive ({e})") from e
            for f in (tmp / "model").rglob("*"):
                fsync_path(f)
            try:
                os.rename(tmp / "model", final)
            except OSError:  # another process cached the same checksum first
                if not _whole(final):
                    raise
            fsync_path(self.cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final


def staging_dir(cfg) -> Path:
    """Where artifacts are put together before an upload (never read by anyone else)."""
    path = cfg.state_dir / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return path


def migrate_local(cfg, engine: Engine, trials: list[tuple[int, str, str]]) -> dict[str, int]:
    """Import artifacts that an earlier release left on local disk: `trials` is (trial id,
    study, directory) of trials with a local artifact; those already recorded are left alone.
    Returns counts: imported, already, missing, damaged."""
    artifacts = TrialArtifacts(cfg, engine)
    with engine.connect() as conn:
        done = records(conn, [t for t, _, _ in trials])
    counts = {"imported": 0, "already": 0, "missing": 0, "damaged": 0}
    for trial_id, study, directory in trials:
        if trial_id in done:
            counts["already"] += 1
            continue
        path = Path(directory)
        if not path.is_dir():
            counts["missing"] += 1
            log.warning("trial id %d: no artifact at %s, not imported", trial_id, path)
            continue
        if not _whole(path):
            counts["damaged"] += 1
            log.warning("trial id %d: artifact at %s does not match its checksum, not imported",
                        trial_id, path)
            continue
        artifacts.upload_directory(path, study, trial_id)
        counts["imported"] += 1
    return counts

