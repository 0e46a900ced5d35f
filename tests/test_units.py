"""The unit files: valid for systemd, and hardened (systemd-analyze, offline, no systemd boot)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from cappuccino_core.units import render_units, write_units

analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


@pytest.fixture
def units(tmp_path):
    return write_units(tmp_path, prefix=tmp_path, python=sys.executable)


def with_unit_dir(directory) -> dict:
    """systemd-analyze's environment with `directory` first in the unit path, so that the
    units are read as installed there, with their drop-ins (a trailing ':' keeps the defaults)."""
    return {**os.environ, "SYSTEMD_UNIT_PATH": f"{directory}:"}


def test_every_unit_verifies(units, tmp_path):
    files = [u for u in units if u.suffix != ".conf"]
    result = subprocess.run([analyze, "verify", "--man=no", *map(str, files)],
                            capture_output=True, text=True, env=with_unit_dir(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr, result.stderr  # the shared drop-in too
    assert (tmp_path / "cappuccino-.service.d" / "10-hardening.conf") in units
    assert {u.name for u in units} >= {
        "cappuccino-train@.service", "cappuccino-ensemble-sync.service",
        "cappuccino-ensemble-sync.timer", "cappuccino-active-study.path",
        "cappuccino-paper-trader.service", "cappuccino-auto-deployer.service",
        "cappuccino-auto-deployer.timer", "cappuccino.target"}


def test_a_broken_unit_fails_verification(tmp_path):
    bad = tmp_path / "cappuccino-broken.service"
    bad.write_text("[Service]\nType=notify\nExecStart=/nonexistent/python -m x\n")
    result = subprocess.run([analyze, "verify", "--man=no", str(bad)], capture_output=True,
                            text=True)
    assert result.returncode != 0


@pytest.mark.parametrize("name", ["cappuccino-paper-trader.service",
                                  "cappuccino-ensemble-sync.service",
                                  "cappuccino-auto-deployer.service"])
def test_exposure_is_at_most_3(units, tmp_path, name):
    result = subprocess.run([analyze, "security", "--offline=true", name],
                            capture_output=True, text=True, env=with_unit_dir(tmp_path))
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)[1])
    assert level <= 3.0, result.stdout[-2000:]


def test_the_units_say_what_the_design_says():
    u = render_units("/opt/cappuccino")
    trader, train = u["cappuccino-paper-trader.service"], u["cappuccino-train@.service"]
    shared = u["cappuccino-.service.d/10-hardening.conf"]
    assert "User=cappuccino" in shared and "ProtectSystem=strict" in shared
    for text in (trader, train):
        assert "Type=notify" in text and "WatchdogSec=" in text and "PartOf=cappuccino.target" in text
        assert "ExecStart=/opt/cappuccino/venv/bin/python -m daemons." in text
    assert "Restart=always" in trader and "ExecReload=/bin/kill -HUP $MAINPID" in trader
    assert "LoadCredential=alpaca:/etc/cappuccino/credentials" in trader
    assert "Restart=on-failure" in train and "Nice=" in train and "PrivateDevices=" not in train
    # start limits that fit each unit: outages cost restarts, a crash loop fails (and alerts)
    assert "StartLimitBurst=10" in trader and "StartLimitIntervalSec=15min" in trader
    assert "StartLimitBurst=20" in train and "StartLimitIntervalSec=30min" in train
    assert "OnUnitActiveSec=10min" in u["cappuccino-ensemble-sync.timer"]
    assert "OnCalendar=hourly" in u["cappuccino-auto-deployer.timer"]
    assert "PathChanged=/etc/cappuccino/active_study.yaml" in u["cappuccino-active-study.path"]
