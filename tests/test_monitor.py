"""Monitoring checks against a prepared database; alerts to a local webhook server."""

import json
from datetime import datetime, timedelta, timezone

import optuna
import pytest
import sqlalchemy as sa

from cappuccino_core import cli
from cappuccino_core.alerts import send_alert
from cappuccino_core.config import load_config
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.monitor import run_checks
from cappuccino_core.storage import (equity_snapshots, make_optuna_storage, open_app_db,
                                     record_event, trader_state)

from conftest import webhook_receiver, write_config
from ensemble_helpers import add_trial


@pytest.fixture
def hook():
    with webhook_receiver() as received_at:
        yield received_at


def make_env(tmp_path, pg_url, url, **extra):
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "ensemble": {"top_n": 2, "min_members": 1},
        "alerts": {"webhook_url": f"{url}/generic", "slack_webhook_url": f"{url}/slack",
                   "discord_webhook_url": f"{url}/discord"}, **extra}, active_study="mon"))
    return cfg, open_app_db(pg_url)


def test_channels_deliver_and_a_failing_one_breaks_nothing(tmp_path, hook):
    url, received = hook
    cfg = load_config(write_config(tmp_path, {"alerts": {
        "webhook_url": f"{url}/generic", "slack_webhook_url": "http://127.0.0.1:9/nothing",
        "discord_webhook_url": f"{url}/discord"}}))
    done = send_alert(cfg, "trader down", "see postgresql://trader:hunter2@db/x", "error")
    assert done == ["webhook", "discord"]  # slack's address refused: logged, skipped
    generic = dict(received)["/generic"]
    assert generic["severity"] == "error" and "trader down" in generic["title"]
    assert "hunter2" not in json.dumps(received) and "trader:***@db" in generic["message"]
    assert "**" in dict(received)["/discord"]["content"]


def test_each_check_alerts_once_per_incident(tmp_path, pg_url, hook):
    url, received = hook
    cfg, engine = make_env(tmp_path, pg_url, url, monitor={"ensemble_max_age_hours": 1})
    storage = make_optuna_storage(pg_url)
    study = optuna.create_study(study_name="mon", storage=storage, direction="maximize")
    study.set_user_attr("n_trials_target", 1)
    add_trial(study, cfg, 0.5)
    sync(cfg, engine)
    stuck = study.ask()  # a RUNNING trial that started three hours ago
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
                     {"t": datetime.utcnow() - timedelta(hours=3), "i": stuck._trial_id})
        conn.execute(sa.text("UPDATE trials SET datetime_complete = :t WHERE state = 'COMPLETE'"),
                     {"t": datetime.utcnow() - timedelta(hours=3)})
        old = (datetime.now(timezone.utc) - timedelta(hours=3)).isoformat()
        conn.execute(trader_state.insert().values(trader="paper", key="last_bar", value=old))
        for eq in (100_000, 110_000, 90_000):
            conn.execute(equity_snapshots.insert().values(
                trader="paper", ts=datetime.now(timezone.utc), equity=eq, cash=eq,
                positions={}))
    record_event(engine, "paper", "warning", "stop_exit", "stop exit BTC/USD at 27,000")
    manifest_path = cfg.state_dir / "ensembles" / "current" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = old
    manifest_path.write_text(json.dumps(manifest))

    keys = {i.key for i in run_checks(cfg, engine)}
    assert keys == {"study-target:mon", "training-stalled:mon", "ensemble-old",
                    "trader-behind", "drawdown"}
    sent = len(received)
    assert sent == 3 * 6  # five incidents and one stop exit, on three channels each
    assert run_checks(cfg, engine) == [] and len(received) == sent  # nothing twice
    # the active study changes: a new incident; the old ones are still open
    from cappuccino_core.studies import write_active_study
    optuna.create_study(study_name="other", storage=storage)
    write_active_study(cfg.config_dir, "other")
    keys = {i.key for i in run_checks(load_config(cfg.config_dir), engine)}
    assert keys == {"ensemble-not-following"}
    assert cli.main(["monitor", "--config-dir", cfg.config_dir]) == 0


def test_alert_command_for_a_failed_unit(tmp_path, hook):
    url, received = hook
    d = write_config(tmp_path, {"alerts": {"webhook_url": f"{url}/generic"}})
    assert cli.main(["alert", "cappuccino-paper-trader.service", "--config-dir", str(d)]) == 0
    assert "cappuccino-paper-trader.service failed" in received[0][1]["title"]
