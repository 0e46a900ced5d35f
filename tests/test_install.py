"""Install into a staging root, `train start/stop` against a recording systemctl."""

import os
import stat
from pathlib import Path

import pytest
import yaml

from cappuccino_core import cli
from cappuccino_core.operations.install import check_interpreter, install, uninstall

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
    from cappuccino_core.common.config import load_config
    from cappuccino_core.training.worker import open_study, target_of
    cfg = load_config(cfg_dir)
    assert target_of(open_study(cfg, "new"), cfg) == 50


def test_install_help_says_where_the_units_really_go(capsys):
    with pytest.raises(SystemExit):
        cli.main(["install", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "/usr/local/lib/systemd/system" in text and "drop-ins under /etc/systemd/system" in text


def test_install_refuses_an_interpreter_the_units_hide():
    with pytest.raises(SystemExit, match="ProtectHome"):
        check_interpreter(Path("/root/.pyenv/versions/3.11.7"))
    with pytest.raises(SystemExit, match="ProtectHome"):
        check_interpreter(Path("/home/ops/venv-python"))
    check_interpreter(Path("/usr"))  # a system Python is fine


def fake_systemctl(tmp_path, monkeypatch, exit_code: int) -> Path:
    calls = tmp_path / "calls"
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit {exit_code}\n")
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    return calls


def test_a_train_start_that_fails_changes_nothing(tmp_path, monkeypatch, capsys):
    """systemctl refusing (no such unit, no systemd): no study created, none activated, no
    target changed."""
    import optuna

    from cappuccino_core.common.config import load_config
    from cappuccino_core.storage.optuna_db import study_exists
    from cappuccino_core.storage.database import make_engine, optuna_storage
    from cappuccino_core.training.worker import open_study, set_target, target_of
    calls = fake_systemctl(tmp_path, monkeypatch, 5)
    cfg_dir = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "s")}},
                           active_study="old")
    before = (cfg_dir / "active_study.yaml").read_text()
    assert cli.main(["train", "start", "--study", "ops", "--n-trials", "9", "--activate",
                     "--config-dir", str(cfg_dir)]) == 1
    assert "nothing was changed" in capsys.readouterr().err
    assert (cfg_dir / "active_study.yaml").read_text() == before
    cfg = load_config(cfg_dir)
    assert not study_exists(make_engine(cfg.storage_url), "ops")
    assert calls.read_text().splitlines()[0].startswith("start cappuccino-train@ops:0")
    # an existing study keeps its target
    set_target(open_study(cfg, "kept"), 40)
    assert cli.main(["train", "start", "--study", "kept", "--n-trials", "9",
                     "--config-dir", str(cfg_dir)]) == 1
    assert target_of(optuna.load_study(study_name="kept", storage=optuna_storage(cfg)), cfg) == 40


def test_study_delete_asks_refuses_the_active_study_and_removes_models(tmp_path, capsys):
    import optuna

    from cappuccino_core.common.config import load_config
    from cappuccino_core.ensemble.publish import sync
    from cappuccino_core.storage.optuna_db import study_exists
    from cappuccino_core.storage.database import app_engine, make_optuna_storage, trial_artifacts
    import sqlalchemy as sa
    from ensemble_helpers import add_trial
    cfg_dir = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "s")},
                                              "ensemble": {"min_members": 1,
                                                           "min_value": None}},
                           active_study="live")
    cfg = load_config(cfg_dir)
    engine = app_engine(cfg)
    storage = make_optuna_storage(cfg.storage_url)
    for name in ("live", "old"):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        add_trial(study, cfg, 0.5, seed=1)
    sync(cfg, engine)
    d = ["--config-dir", str(cfg_dir)]
    models = lambda: len(list((tmp_path / "s" / "artifacts").rglob("*")))  # noqa: E731
    with engine.connect() as conn:
        kept = conn.execute(sa.select(sa.func.count()).select_from(trial_artifacts)).scalar()
    assert kept == 2 and models() > 0
    assert cli.main(["study", "delete", "old", *d]) == 2  # asks
    assert study_exists(engine, "old")
    assert cli.main(["study", "delete", "live", "--yes", *d]) == 1  # the active study
    assert "is the active study" in capsys.readouterr().err
    assert cli.main(["study", "delete", "nosuch", "--yes", *d]) == 1
    files_before = models()
    assert cli.main(["study", "delete", "old", "--yes", *d]) == 0
    assert "1 trial(s), 1 model(s)" in capsys.readouterr().out
    assert not study_exists(engine, "old") and study_exists(engine, "live")
    with engine.connect() as conn:
        left = conn.execute(sa.select(trial_artifacts.c.study)).scalars().all()
    assert left == ["live"] and models() < files_before
