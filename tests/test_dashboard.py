"""The Optuna ecosystem on the URL operators are told to use: `optuna-dashboard`, started as
`cappuccino study list` prints it, lists our study with its trials, their sortable per-split
scalars, the split table as the trial's note, PPO diagnostics, and the model artifact; the
artifact's TensorBoard events read with TensorBoard's own reader."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from cappuccino_core import cli
from cappuccino_core.common.config import load_config
from cappuccino_core.training.worker import WorkerHooks, open_study, run_worker, set_target

from conftest import write_config
from ensemble_helpers import local_model, stored_file
from test_artifact_store import free_port, s3_server  # noqa: F401 (a fixture)
from test_operator import chromium

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "optuna-dashboard.png"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def serving(argv: list[str], env: dict | None = None, timeout: float = 90):
    """A dashboard started with `argv` (and --port): yields (its base URL, {study name: id})
    once its API answers; stopped afterwards."""
    port = free_port()
    proc = subprocess.Popen([*argv, "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                studies = get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"{argv[0]} did not start: {proc.stdout.read()}")
                time.sleep(0.3)
        yield base, {st["study_name"]: st["study_id"] for st in studies}
    finally:
        proc.terminate()
        proc.wait(10)


def download(base: str, study_id: int, row: dict) -> bytes:
    """The trial's one model archive, as the dashboard's download link serves it."""
    (artifact,) = row["artifacts"]
    url = f"{base}/artifacts/{study_id}/{row['trial_id']}/{artifact['artifact_id']}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


def test_optuna_dashboard_shows_our_trials_and_models(tmp_path, pg_url, capsys):
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "training": {"total_timesteps": 2048, "n_envs": 16}}, active_study="sample"))
    study = open_study(cfg, "sample")
    set_target(study, 1)
    assert run_worker(cfg, "sample", WorkerHooks()) == 1

    assert cli.main(["study", "list", "--config-dir", cfg.config_dir]) == 0
    (command,) = [line.strip() for line in capsys.readouterr().out.splitlines()
                  if line.strip().startswith("optuna-dashboard ")]
    assert "'postgresql+psycopg2://" in command  # the explicit driver: psycopg 3 not needed
    argv = shlex.split(command)
    argv[0] = str(Path(sys.executable).parent / argv[0])  # the test's virtualenv
    with serving([*argv, "--quiet"]) as (base, studies):
        detail = get(f"{base}/api/studies/{studies['sample']}")
        (trial,) = detail["trials"]
        assert trial["state"] == "Complete"
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        for key in ("mean_excess_sharpe", "worst_excess_sharpe", "mean_max_drawdown",
                    "mean_turnover", "ppo_approx_kl", "ppo_clip_fraction",
                    "ppo_explained_variance", "ppo_entropy", "ppo_value_loss",
                    "ppo_policy_loss", "ppo_learning_rate"):
            float(attrs[key])  # a scalar the dashboard can sort by
        assert "### Cross-validation splits" in trial["note"]["body"]
        assert trial["note"]["body"].count("\n| ") == 15 + 1  # header and 15 splits
        (artifact,) = trial["artifacts"]
        assert artifact["mimetype"] == "application/x-tar"
        assert artifact["artifact_id"] == attrs["artifact_id"]
        # the filesystem store is the dashboard's --artifact-dir: the model downloads
        body = download(base, studies["sample"], trial)
        assert body == stored_file(cfg, study.trials[0]).read_bytes()
        if chromium() is not None:
            take_screenshot(f"{base}/dashboard/studies/{studies['sample']}/trials", tmp_path)

    # the PPO diagnostics in the model artifact, as TensorBoard reads them
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = local_model(cfg, study.trials[0]) / "tensorboard"
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for run in ("split_1_of_15", "split_15_of_15", "final_fit"):
        for name in ("approx_kl", "clip_fraction", "explained_variance", "entropy",
                     "value_loss", "policy_loss", "learning_rate"):
            assert f"{run}/{name}" in tags
    steps = [e.step for e in acc.Scalars("final_fit/learning_rate")]
    per_update = 16 * study.trials[0].params["n_steps"]  # n_envs x rollout length
    assert steps == [per_update * (k + 1) for k in range(max(1, 2048 // per_update))]
    with tarfile.open(stored_file(cfg, study.trials[0])) as tar:
        assert {"model.pt", "spec.json", "model.sha256"} <= set(tar.getnames())


def take_screenshot(url: str, tmp_path: Path) -> None:
    """The dashboard's trial table, for the README (docs/optuna-dashboard.png), when asked."""
    if os.environ.get("CAPPUCCINO_SAVE_DASHBOARD_SCREENSHOT") != "1":
        return
    png = tmp_path / "dashboard.png"
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1400,1750", "--virtual-time-budget=15000",
                    f"--screenshot={png}", url], capture_output=True, timeout=120, check=True)
    SCREENSHOT.write_bytes(png.read_bytes())


@pytest.mark.parametrize("store", ["database", "s3"])
def test_models_download_from_the_dashboard_whatever_the_store(tmp_path, pg_url, store,
                                                               request, monkeypatch, capsys):
    """`cappuccino dashboard`: optuna-dashboard served with the product's artifact store, so a
    model stored in the database (which optuna-dashboard's own command cannot read) or in S3
    downloads; the study's metric has its name."""
    from cappuccino_core.artifacts.store import make_store
    from cappuccino_core.storage.database import app_engine
    from ensemble_helpers import add_trial, stored
    from test_artifact_store import make_env
    s3_url = request.getfixturevalue("s3_server") if store == "s3" else None
    cfg, _, _ = make_env(tmp_path, pg_url, store, s3_url, monkeypatch)
    study = open_study(cfg, "named")
    trial = add_trial(study, cfg, 0.4, seed=3)
    assert cli.main(["study", "list", "--config-dir", cfg.config_dir]) == 0
    out = capsys.readouterr().out
    assert "pip install 'optuna-dashboard==0.21.0' 'psycopg2-binary'" in out
    assert "cappuccino dashboard" in out
    if store == "s3":
        assert f'bucket_name = "{cfg.artifacts.s3_bucket}"' in out and s3_url in out
    argv = [sys.executable, "-m", "cappuccino_core.cli", "dashboard", "--config-dir",
            cfg.config_dir]
    with serving(argv, env={**os.environ}) as (base, studies):
        detail = get(f"{base}/api/studies/{studies['named']}")
        assert detail.get("objective_names") == ["cv_excess_sharpe_penalised"]
        (row,) = detail["trials"]
        body = download(base, studies["named"], row)
    with make_store(cfg, app_engine(cfg)).open_reader(stored(cfg, trial).artifact_id) as f:
        assert body == f.read() and len(body) > 1000


def test_the_printed_dashboard_command_works_in_a_fresh_virtualenv(tmp_path, pg_url, capsys):
    """What `study list` tells an operator, done as written: a new virtualenv, the pip line,
    the dashboard command; the trials and the model come over HTTP."""
    from ensemble_helpers import add_trial
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")}},
        active_study="fresh"))
    trial = add_trial(open_study(cfg, "fresh"), cfg, 0.3, seed=4)
    assert cli.main(["study", "list", "--config-dir", cfg.config_dir]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    pip_line = next(line for line in lines if line.startswith("pip install "))
    command = next(line for line in lines if line.startswith("optuna-dashboard "))
    venv = tmp_path / "browse"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(f"{venv}/bin/python -m {pip_line} -q", shell=True,
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr[-3000:]
    argv = shlex.split(command)
    argv[0] = str(venv / "bin" / argv[0])
    with serving([*argv, "--quiet"], env={"PATH": "/usr/bin:/bin"}) as (base, studies):
        (row,) = get(f"{base}/api/studies/{studies['fresh']}")["trials"]
        assert download(base, studies["fresh"], row) == stored_file(cfg, trial).read_bytes()
