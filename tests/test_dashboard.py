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
from pathlib import Path

import pytest

from cappuccino_core import cli
from cappuccino_core.config import load_config
from cappuccino_core.training.worker import WorkerHooks, open_study, run_worker, set_target

from conftest import write_config
from ensemble_helpers import local_model, stored_file
from test_artifact_store import free_port
from test_operator import chromium

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "optuna-dashboard.png"


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


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
    port = free_port()
    proc = subprocess.Popen([*argv, "--port", str(port), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"optuna-dashboard did not start: {proc.stdout.read()}")
                time.sleep(0.3)
        (ours,) = [s for s in studies if s["study_name"] == "sample"]
        detail = get(f"{base}/api/studies/{ours['study_id']}")
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
        url = f"{base}/artifacts/{ours['study_id']}/{trial['trial_id']}/{artifact['artifact_id']}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
        assert body == stored_file(cfg, study.trials[0]).read_bytes()
        if chromium() is not None:
            take_screenshot(f"{base}/dashboard/studies/{ours['study_id']}/trials", tmp_path)
    finally:
        proc.terminate()
        proc.wait(10)

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
