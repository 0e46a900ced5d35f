"""Trial models in an artifact store every host reaches: filesystem, S3 (a real S3-compatible
server, moto's, started here) and the database store; uploads that are cut short are never
served; models an earlier release left on local disk are imported."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from cappuccino_core import cli
from cappuccino_core.artifacts.store import DatabaseArtifactStore
from cappuccino_core.artifacts.model import ModelSpec, load_artifact, save_artifact
from cappuccino_core.common.config import load_config
from cappuccino_core.ensemble import sync
from cappuccino_core.ensemble.selection import select_members
from cappuccino_core.storage.database import artifact_chunks, make_optuna_storage, open_app_db

from conftest import write_config
from ensemble_helpers import add_trial, local_model, stored, stored_file, trial_artifacts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server in its own process: boto3 talks HTTP to it as to any S3 service."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto's S3 server did not start")
    yield url
    proc.terminate()
    proc.wait(10)


def make_env(tmp_path, pg_url, store: str, s3_url: str | None = None, monkeypatch=None):
    artifacts = {"store": store}
    if store == "s3":
        import boto3
        for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                           ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(key, value)
        bucket = f"models-{os.urandom(4).hex()}"
        boto3.client("s3", endpoint_url=s3_url).create_bucket(Bucket=bucket)
        artifacts |= {"s3_bucket": bucket, "s3_endpoint_url": s3_url}
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "artifacts": artifacts, "ensemble": {"top_n": 4, "min_members": 1}},
        active_study="alpha"))
    study = optuna.create_study(study_name="alpha", storage=make_optuna_storage(pg_url),
                                direction="maximize")
    return cfg, open_app_db(pg_url), study


def damage(cfg, engine, trial) -> None:
    """Change bytes of a trial's archive where its store keeps it."""
    rec = stored(cfg, trial)
    if cfg.artifacts.store == "filesystem":
        with open(stored_file(cfg, trial), "r+b") as f:
            f.seek(600)
            f.write(b"\x00\x01\x02")
    elif cfg.artifacts.store == "database":
        with engine.begin() as conn:
            conn.execute(artifact_chunks.update().where(
                artifact_chunks.c.artifact_id == rec.artifact_id).values(data=b"not a model"))
    else:
        store = trial_artifacts(cfg).store
        store.client.put_object(Bucket=store.bucket, Key=rec.artifact_id, Body=b"not a model")


@pytest.mark.parametrize("store", ["filesystem", "database", "s3"])
def test_each_store_serves_whole_models_and_refuses_changed_bytes(store, tmp_path, pg_url,
                                                                  request, monkeypatch):
    s3_url = request.getfixturevalue("s3_server") if store == "s3" else None
    cfg, engine, study = make_env(tmp_path, pg_url, store, s3_url, monkeypatch)
    good = add_trial(study, cfg, 0.5, seed=1)
    bad = add_trial(study, cfg, 0.9, seed=2)
    damage(cfg, engine, bad)

    sel = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in sel.members] == [good._trial_id]
    (why,) = [w for tid, _, w in sel.skipped if tid == bad._trial_id]
    assert "checksum" in why and "does not match the recorded" in why
    # the member is read from this host's cache, keyed by the archive's checksum
    member = sel.members[0]
    assert member.artifact_dir == cfg.artifact_cache_dir / stored(cfg, good).sha256
    assert member.sha256 == good.user_attrs["sha256"]  # the weights' checksum
    # Optuna knows the artifact (the dashboard's Artifacts pane reads this)
    (meta,) = optuna.artifacts.get_all_artifact_meta(good, storage=study._storage)
    assert meta.artifact_id == good.user_attrs["artifact_id"] == stored(cfg, good).artifact_id
    assert meta.mimetype == "application/x-tar"


def test_a_damaged_cached_copy_is_fetched_again(tmp_path, pg_url):
    cfg, engine, study = make_env(tmp_path, pg_url, "database")
    trial = add_trial(study, cfg, 0.5)
    cached = local_model(cfg, trial)
    with open(cached / "model.pt", "r+b") as f:
        f.write(b"garbage")
    assert select_members(engine, cfg, "alpha").members[0].trial_id == trial._trial_id
    assert local_model(cfg, trial) == cached
    from cappuccino_core.artifacts.model import sha256_file
    assert sha256_file(cached / "model.pt") == trial.user_attrs["sha256"]


class Killed(BaseException):
    pass


class BreaksHalfway(DatabaseArtifactStore):
    """The database store with a writer that dies after its first chunk (a trainer killed
    mid-upload, in-process; the two-host test kills a real one)."""
    CHUNK_BYTES = 1024

    def write(self, artifact_id, content_body):
        class Dying:
            calls = 0

            def read(self, n):
                Dying.calls += 1
                if Dying.calls > 1:
                    raise Killed("killed mid-upload")
                return content_body.read(n)
        super().write(artifact_id, Dying())


def test_an_upload_cut_short_is_never_served(tmp_path, pg_url, monkeypatch):
    cfg, engine, study = make_env(tmp_path, pg_url, "database")
    whole = add_trial(study, cfg, 0.1, seed=1)
    monkeypatch.setattr("cappuccino_core.artifacts.store.make_store",
                        lambda cfg, engine: BreaksHalfway(engine))
    with pytest.raises(Killed):
        add_trial(study, cfg, 0.9, seed=2)
    cut = study.trials[-1]
    study.tell(cut.number, 0.9)  # even if the trial were somehow marked COMPLETE
    monkeypatch.undo()
    # Whatever Optuna itself noted of the cut upload (its order of writes changed in 5.1), the
    # product's promise is that the model is never served:
    sel = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in sel.members] == [whole._trial_id]
    (why,) = [w for tid, _, w in sel.skipped if tid == cut._trial_id]
    assert "no complete model upload recorded" in why


def test_models_left_on_local_disk_are_imported_by_migrate(tmp_path, pg_url, capsys):
    """What an earlier release did: the artifact directory on the trainer's disk, its path and
    checksum in the trial's user attrs, and nothing in a store."""
    cfg, engine, study = make_env(tmp_path, pg_url, "database")
    template = local_model(cfg, add_trial(study, cfg, 0.1, seed=1))
    old_dirs = []
    for value, damaged in ((0.7, False), (0.8, True)):
        trial = study.ask()
        spec_dict = json.loads((template / "spec.json").read_text())
        agent, _ = load_artifact(template)
        spec = ModelSpec.from_dict(spec_dict | {"trial_id": trial._trial_id,
                                                "trial_number": trial.number, "value": value})
        directory = tmp_path / "state" / "trials" / "alpha" / str(trial._trial_id)
        digest = save_artifact(directory, agent, spec)
        if damaged:
            (directory / "model.pt").write_bytes(b"truncated")
        trial.set_user_attr("artifact_dir", str(directory))
        trial.set_user_attr("sha256", digest)
        study.tell(trial, value)
        old_dirs.append(trial._trial_id)
    before = select_members(engine, cfg, "alpha")
    assert not set(old_dirs) & {m.trial_id for m in before.members}
    assert "artifacts migrate" in dict((t, w) for t, _, w in before.skipped)[old_dirs[0]]

    assert cli.main(["artifacts", "migrate", "--config-dir", cfg.config_dir]) == 1
    assert "1 imported into the database store, 0 already there, 0 missing on this host, " \
           "1 damaged" in capsys.readouterr().out
    assert cli.main(["artifacts", "migrate", "--config-dir", cfg.config_dir]) == 1
    assert "0 imported" in capsys.readouterr().out  # run twice: nothing twice
    after = select_members(engine, cfg, "alpha")
    assert [m.trial_id for m in after.members][:1] == [old_dirs[0]]
    assert old_dirs[1] not in {m.trial_id for m in after.members}
    assert sync(cfg, engine).status == "published"


def test_the_database_store_keeps_an_artifact_whole_across_chunks(pg_url):
    store = DatabaseArtifactStore(open_app_db(pg_url))
    store.CHUNK_BYTES = 1000
    payload = os.urandom(4321)
    with tempfile.TemporaryFile() as f:
        f.write(payload)
        f.seek(0)
        store.write("a1", f)
    with store.open_reader("a1") as r:
        assert r.read() == payload
    store.remove("a1")
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.open_reader("a1")
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        store.remove("a1")


def test_an_archive_with_a_path_outside_the_artifact_is_refused(tmp_path, pg_url):
    cfg, engine, study = make_env(tmp_path, pg_url, "database")
    trial = add_trial(study, cfg, 0.5)
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("model.pt", "spec.json", "model.sha256"):
        (evil / name).write_bytes((local_model(cfg, trial) / name).read_bytes())
    (evil / "extra").mkdir()
    (evil / "extra" / "x.sh").write_text("echo hi")
    for path in cfg.artifact_cache_dir.iterdir():
        shutil.rmtree(path)
    trial_artifacts(cfg).upload_directory(evil, "alpha", trial._trial_id)
    sel = select_members(engine, cfg, "alpha")
    assert not sel.members and "no artifact has" in sel.skipped[0][2]
    assert not list(Path(cfg.artifact_cache_dir).rglob("x.sh"))
