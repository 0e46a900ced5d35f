"""The unit files: valid for systemd, and hardened (systemd-analyze, offline, no systemd boot)."""

import os
import re
import shutil
import subprocess
import sys

import pytest

from cappuccino_core.operations.units import render_units, write_units

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
                                  "cappuccino-auto-deployer.service",
                                  "cappuccino-monitor.service", "cappuccino-alert@x.service",
                                  "cappuccino-train@study.service"])
def test_every_installed_service_is_verified_and_its_exposure_is_at_most_2(tmp_path, name):
    """On what `cappuccino install` produces: vendor units, the shared drop-in, and an
    operator's drop-in in /etc, all read as systemd reads them."""
    from cappuccino_core.operations.install import install
    root, prefix = tmp_path / "root", tmp_path / "opt"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)  # what ExecStart= runs
    install(str(prefix), str(root), venv=False, user=False, systemd_reload=False,
            log=lambda _: None)
    edits = root / "etc/systemd/system/cappuccino-paper-trader.service.d"
    edits.mkdir(parents=True)
    (edits / "override.conf").write_text("[Service]\nNice=3\n")
    paths = f"{root}/etc/systemd/system:{root}/usr/local/lib/systemd/system:"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": paths}
    unit = root / "usr/local/lib/systemd/system" / re.sub(r"@[^.]+", "@", name)
    verified = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                              text=True, env=env)
    assert verified.returncode == 0 and "Unknown key" not in verified.stderr, verified.stderr
    result = subprocess.run([analyze, "security", "--offline=true", name],
                            capture_output=True, text=True, env=env)
    level = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)[1])
    assert level <= 2.0, result.stdout[-2000:]
    if name == "cappuccino-paper-trader.service":  # the operator's drop-in is read too
        shown = subprocess.run([analyze, "cat-config", "--root", str(root),
                                "systemd/system/cappuccino-paper-trader.service.d/override.conf"],
                               capture_output=True, text=True)
        assert "Nice=3" in shown.stdout


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
    for name, text in u.items():  # ordering after the network also pulls it in
        if "After=network-online.target" in text:
            assert "Wants=network-online.target" in text, name
    assert "CacheDirectory=cappuccino" in shared
    assert "PathChanged=/etc/cappuccino/active_study.yaml" in u["cappuccino-active-study.path"]
