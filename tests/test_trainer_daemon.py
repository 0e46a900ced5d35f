"""The trainer daemon as systemd runs it: sd_notify, SIGTERM, and a worker killed mid-trial.
Real processes, real PostgreSQL; the sd_notify socket is a real datagram socket."""

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cappuccino_core.common.config import load_config
from cappuccino_core.storage.database import make_optuna_storage
from cappuccino_core.training.worker import WorkerHooks, open_study, run_worker, set_target

from conftest import trials, wait_for, write_config

RUNNING = TrialState.RUNNING
# walk-forward, 2 splits: on a CPU both and the final fit train as one batch
PROGRESS = "splits 1-2/2 and the final fit, update"


def make_config(tmp_path, name, pg_url, timesteps):
    return write_config(tmp_path / name, {
        "storage": {"url": pg_url},
        "paths": {"state_dir": str(tmp_path / "state")},
        "training": {"total_timesteps": timesteps, "n_envs": 16, "cv": "walk_forward",
                     "cv_groups": 3, "cv_test_groups": 1, "heartbeat_interval_s": 1,
                     "heartbeat_grace_s": 3},
    })


def start_daemon(config_dir, instance, notify_socket=None, log=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    if notify_socket:
        env["NOTIFY_SOCKET"] = notify_socket
    out = open(log or os.devnull, "w")  # a file: a pipe nobody reads would block the daemon
    return subprocess.Popen([sys.executable, "-m", "daemons.trainer", instance,
                             "--config-dir", str(config_dir)], env=env,
                            stdout=out, stderr=subprocess.STDOUT, text=True)


def test_sigterm_stops_within_seconds_and_leaves_no_trial_running(tmp_path, pg_url):
    cfg_dir = make_config(tmp_path, "etc", pg_url, timesteps=50_000_000)
    study = open_study(load_config(cfg_dir), "sig")
    set_target(study, 5)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    log = tmp_path / "daemon.log"
    proc = start_daemon(cfg_dir, "sig:0", sock_path, log)
    messages = []

    def drain():
        deadline = time.monotonic() + 0.5  # the daemon may send faster than we read
        try:
            while time.monotonic() < deadline:
                messages.append(sock.recv(4096).decode())
        except (socket.timeout, BlockingIOError):
            pass
        return any(PROGRESS in m for m in messages)

    try:
        wait_for(lambda: drain() and trials(study, RUNNING), 120, "a running trial")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        stopped_in = time.monotonic() - started
        drain()  # what it said while stopping
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    assert code == 0, log.read_text()
    assert stopped_in < 10
    assert "Traceback" not in log.read_text()  # a requested stop is no crash
    assert not trials(study, RUNNING)
    (failed,) = trials(study, TrialState.FAIL)
    (queued,) = trials(study, TrialState.WAITING)
    # the interrupted work is queued again (Optuna keeps a queued trial's parameters here)
    assert queued.system_attrs["fixed_params"] == failed.params
    joined = "\n".join(messages)
    assert "READY=1" in joined and "WATCHDOG=1" in joined and "STOPPING=1" in joined
    assert joined.index("READY=1") < joined.index(PROGRESS)
    assert f"STATUS=sig: trial 0, {PROGRESS}" in joined


def test_killed_worker_trial_becomes_fail_and_is_retried(tmp_path, pg_url):
    slow = make_config(tmp_path, "slow", pg_url, timesteps=50_000_000)
    fast = load_config(make_config(tmp_path, "fast", pg_url, timesteps=1024))
    study = open_study(fast, "k9")
    set_target(study, 1)
    proc = start_daemon(slow, "k9:0")
    try:  # a trial that has drawn all its parameters (the seed is recorded right after),
        # so its retry must reuse them
        wait_for(lambda: any("seed" in t.user_attrs for t in trials(study, RUNNING)), 120,
                 "a running trial with its parameters")
        proc.kill()  # kill -9: no chance to clean up
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    (killed,) = trials(study, RUNNING)  # still RUNNING in the database: nobody said otherwise
    time.sleep(fast.training.heartbeat_grace_s + 1)
    # a second worker (another host, or systemd's restart) finds it stale
    assert run_worker(fast, "k9", WorkerHooks()) == 1
    study = optuna.load_study(study_name="k9", storage=make_optuna_storage(pg_url))
    assert not trials(study, RUNNING)
    assert study.trials[killed.number].state == TrialState.FAIL
    (retry,) = trials(study, TrialState.COMPLETE)
    assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == killed.number
    assert retry.params == killed.params
