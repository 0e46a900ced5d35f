"""Install into a staging root, `train start/stop` against a recording systemctl."""

import os
import stat
from pathlib import Path

import pytest
import yaml

from cappuccino_core import cli
from cappuccino_core.install import check_interpreter, install, uninstall

from conftest import REPO, write_config


def test_install_stages_units_and_config_and_never_overwrites(tmp_path):
    root = tmp_path / "root"
    etc = root / "etc" / "cappuccino"
    etc.mkdir(parents=True)
    (etc / "cappuccino.yaml").write_text("# the operator's\nrisk: {trailing_stop_pct: 0.08}\n")
    done = install("/opt/cappuccino", str(root), venv=False, user=False, log=lambda _: None)
    vendor = root / "usr/local/lib/systemd/system"
    unit = (vendor / "cappuccino-paper-trader.service").read_text()
    assert "ExecStart=/opt/cappuccino/venv/bin/python -m daemons.paper_trader" in unit
    assert (vendor / "cappuccino-.service.d/10-hardening.conf").exists()
    assert not list((root / "etc/systemd/system").glob("cappuccino*"))  # the operator's place
    assert os.readlink(root / "usr/local/bin/cappuccino") == "/opt/cappuccino/venv/bin/cappuccino"
    assert "0.08" in (etc / "cappuccino.yaml").read_text()  # kept
    assert (etc / "active_study.yaml").read_text() == (REPO / "config/active_study.yaml").read_text()
    assert stat.S_IMODE(os.stat(etc / "credentials").st_mode) == 0o700
    assert any("kept the operator's" in line for line in done)
    install("/opt/cappuccino", str(root), venv=False, user=False, log=lambda _: None)  # again
    assert "0.08" in (etc / "cappuccino.yaml").read_text()
    uninstall("/opt/cappuccino", str(root), log=lambda _: None)
    assert not list(vendor.glob("cappuccino*")) and not (root / "usr/local/bin/cappuccino").exists()
    assert (etc / "cappuccino.yaml").exists()  # configuration stays


def test_an_upgrade_keeps_the_operators_drop_ins_and_retires_old_unit_copies(tmp_path):
    root = tmp_path / "root"
    install("/opt/cappuccino", str(root), venv=False, user=False, log=lambda _: None)
    edits = root / "etc/systemd/system/cappuccino-paper-trader.service.d"
    edits.mkdir(parents=True)
    (edits / "override.conf").write_text("[Service]\nNice=3\n")  # `systemctl edit`
    old_copy = root / "etc/systemd/system/cappuccino-monitor.service"  # an older release's
    old_copy.write_text("[Service]\nExecStart=/old\n")
    vendor = root / "usr/local/lib/systemd/system/cappuccino-paper-trader.service"
    vendor.write_text("stale")  # the release before
    done = install("/opt/cappuccino", str(root), venv=False, user=False, log=lambda _: None)
    assert (edits / "override.conf").read_text() == "[Service]\nNice=3\n"  # the edit holds
    assert "daemons.paper_trader" in vendor.read_text()  # the vendor unit is the new one
    assert not old_copy.exists() and old_copy.with_name(old_copy.name + ".pre-vendor").exists()
    assert any("moved the old unit copy" in line for line in done)
    uninstall("/opt/cappuccino", str(root), log=lambda _: None)
    assert (edits / "override.conf").exists()  # the operator's changes stay


def test_train_start_and_stop_call_systemctl(tmp_path, monkeypatch, capsys):
    calls = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    cfg_dir = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "s")}},
                           active_study="old")
    assert cli.main(["train", "start", "--study", "new", "--workers", "2", "--n-trials", "50",
                     "--activate", "--config-dir", str(cfg_dir)]) == 0
    assert yaml.safe_load((cfg_dir / "active_study.yaml").read_text()) == {"study": "new"}
    assert cli.main(["train", "stop", "--study", "new", "--config-dir", str(cfg_dir)]) == 0
    lines = calls.read_text().splitlines()
    assert lines[0] == "start cappuccino-train@new:0.service cappuccino-train@new:1.service"
    assert lines[1].startswith("stop cappuccino-train@new:*.service")
    from cappuccino_core.config import load_config
    from cappuccino_core.training.worker import open_study, target_of
    cfg = load_config(cfg_dir)
    assert target_of(open_study(cfg, "new"), cfg) == 50


def test_install_refuses_an_interpreter_the_units_hide():
    with pytest.raises(SystemExit, match="ProtectHome"):
        check_interpreter(Path("/root/.pyenv/versions/3.11.7"))
    with pytest.raises(SystemExit, match="ProtectHome"):
        check_interpreter(Path("/home/ops/venv-python"))
    check_interpreter(Path("/usr"))  # a system Python is fine
