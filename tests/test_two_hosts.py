"""Training on one host, trading on another, with nothing shared but PostgreSQL.

Each "host" is a process tree in its own mount namespace with a private tmpfs mounted over the
same state directory: what one host writes to its disk the other never sees, as on two
machines. Host B trains; a second trainer on B is killed (SIGKILL) in the middle of uploading a
model to the database artifact store; host A syncs the ensemble and replays the trader, and
serves exactly B's complete trials.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa

from cappuccino_core.common.config import load_config
from cappuccino_core.storage.database import (artifact_chunks, decisions, ensemble_versions, open_app_db,
                                     trial_artifacts)

from conftest import REPO, write_config

STUDY = "two"

# Host B's second trainer: the database store, in small chunks, and a SIGKILL of the whole
# process once two of them are written inside the upload's open transaction.
DIES_MID_UPLOAD = """
import os, signal, sys
from cappuccino_core.artifacts import store as artifact_store
from cappuccino_core.common.config import load_config
from cappuccino_core.training.worker import open_study, run_worker, set_target

class DiesMidUpload(artifact_store.DatabaseArtifactStore):
    CHUNK_BYTES = 4096

    def write(self, artifact_id, body):
        class Reader:
            reads = 0
            def read(self, size):
                Reader.reads += 1
                if Reader.reads == 3:
                    print("killing mid-upload", artifact_id, flush=True)
                    os.kill(os.getpid(), signal.SIGKILL)
                return body.read(size)
        super().write(artifact_id, Reader())

artifact_store.make_store = lambda cfg, engine: DiesMidUpload(engine)
cfg = load_config(sys.argv[1])
set_target(open_study(cfg, sys.argv[2]), 3)
run_worker(cfg, sys.argv[2])
"""


def can_separate_hosts() -> bool:
    ok = os.geteuid() == 0 and shutil.which("unshare") is not None
    if not ok and os.environ.get("CAPPUCCINO_REQUIRE_SYSTEMD_TESTS") == "1":
        pytest.fail("the two-host test is required here: it needs root and unshare(1)")
    return ok


def on_host(disk, argv: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `argv` on a fresh "host": a private mount namespace whose `disk` is its own tmpfs."""
    script = f'mount -t tmpfs cappuccino-host "{disk}" && mkdir "{disk}/state" && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "host", *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "CAPPUCCINO_TORCH_THREADS": "1"})


def test_a_host_serves_the_models_another_host_trained(tmp_path, pg_url):
    if not can_separate_hosts():
        pytest.skip("needs root and unshare(1) for separate mount namespaces")
    disk = tmp_path / "disk"  # every host mounts its own, private disk here
    disk.mkdir()
    etc = write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(disk / "state")},
        "artifacts": {"store": "database"},
        "training": {"total_timesteps": 2048, "n_envs": 16},
        "ensemble": {"min_value": None, "min_members": 1, "near_constant": "admit"}},
        active_study=STUDY)
    cappuccino = [sys.executable, "-m", "cappuccino_core.cli"]

    trained = on_host(disk, [*cappuccino, "train", "--study", STUDY, "--n-trials", "2",
                             "--config-dir", str(etc)])
    assert trained.returncode == 0, trained.stderr[-3000:]
    killed = on_host(disk, [sys.executable, "-c", DIES_MID_UPLOAD, str(etc), STUDY])
    assert killed.returncode == -9 and "killing mid-upload" in killed.stdout, killed.stderr[-3000:]
    cut_artifact = killed.stdout.split()[-1]

    engine = open_app_db(pg_url)
    with engine.connect() as conn:
        complete = {r.trial_id for r in conn.execute(sa.select(trial_artifacts.c.trial_id))}
        assert len(complete) == 2
        assert not conn.execute(sa.select(artifact_chunks.c.seq).where(
            artifact_chunks.c.artifact_id == cut_artifact)).first()  # rolled back, whole

    served = on_host(disk, ["sh", "-c", " ".join([
        *cappuccino, "ensemble", "sync", "--config-dir", str(etc), "&&",
        *cappuccino, "paper", "--replay", "--name", "host-a", "--config-dir", str(etc), "&&",
        "echo", "CACHED", "&&", "ls", str(disk / "state" / "artifact-cache")])])
    assert served.returncode == 0, served.stderr[-3000:]
    cached = served.stdout.split("CACHED", 1)[1].split()
    assert len(cached) == 2 and all(len(name) == 64 for name in cached)  # by checksum
    with engine.connect() as conn:
        (manifest,) = conn.execute(sa.select(ensemble_versions.c.manifest)).scalars()
        assert {m["trial_id"] for m in manifest["members"]} == complete
        used = conn.execute(sa.select(decisions.c.ensemble).where(
            decisions.c.trader == "host-a").distinct()).scalars().all()
        assert used == [manifest["version"]]
    assert not any(disk.iterdir())  # nothing either host wrote reached the shared disk
    assert load_config(etc).active_study == STUDY
