"""Monitoring checks against a prepared database; alerts to a local webhook server."""

import json
from datetime import datetime, timedelta, timezone

import optuna
import pytest
import sqlalchemy as sa

from cappuccino_core import cli
from cappuccino_core.common.alerts import send_alert
from cappuccino_core.common.config import load_config
from cappuccino_core.ensemble.publish import sync
from cappuccino_core.operations.monitor import run_checks
from cappuccino_core.storage.database import (equity_snapshots, make_optuna_storage, open_app_db,
                                     record_event, trader_state)

from conftest import REPO, webhook_receiver, write_config
from ensemble_helpers import add_trial


@pytest.fixture
def hook():
    with webhook_receiver() as received_at:
        yield received_at


def make_env(tmp_path, pg_url, url, **extra):
    cfg = load_config(write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "ensemble": {"top_n": 2, "min_members": 1},
        "alerts": {"urls": [apprise_json(url, "generic"), apprise_json(url, "second"),
                            apprise_ntfy(url, "cappuccino-alerts")]}, **extra},
        active_study="mon"))
    return cfg, open_app_db(pg_url)


def apprise_json(url: str, path: str) -> str:
    """Apprise's generic JSON webhook to the local receiver (json:// is plain http)."""
    return f"json://{url.removeprefix('http://')}/{path}"


def apprise_ntfy(url: str, topic: str) -> str:
    """ntfy, the phone-push service, as a self-hosted server: here, the local receiver."""
    return f"ntfy://{url.removeprefix('http://')}/{topic}"


def test_channels_deliver_and_a_failing_one_breaks_nothing(tmp_path, hook):
    url, received = hook
    cfg = load_config(write_config(tmp_path, {"alerts": {"urls": [
        apprise_json(url, "generic"), "json://127.0.0.1:9/nothing", "not-a-url",
        apprise_ntfy(url, "cappuccino-alerts")]}}))
    done = send_alert(cfg, "trader down", "see postgresql://trader:hunter2@db/x", "error")
    assert done == ["json", "ntfy"]  # the refused address and the bad URL: logged, skipped
    generic = dict(received)["/generic"]
    assert generic["type"] == "failure" and "trader down" in generic["title"]
    assert "hunter2" not in json.dumps(received) and "trader:***@db" in generic["message"]
    # ntfy publishes as JSON to the server's root, the topic in the body
    # (https://docs.ntfy.sh/publish/#publish-as-json)
    (push,) = [b for p, b in received if p == "/" and b.get("topic") == "cappuccino-alerts"]
    assert "trader:***@db" in push["message"] and "trader down" in push["title"]


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
    record_event(engine, "paper", "warning", "stop_exit", "stop exit ETH/USD at 1,700")
    manifest_path = cfg.state_dir / "ensembles" / "current" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["created_at"] = old
    manifest_path.write_text(json.dumps(manifest))

    before = len(received)
    keys = {i.key for i in run_checks(cfg, engine)}
    assert keys == {"study-target:mon", "training-stalled:mon", "ensemble-old",
                    "trader-behind:paper", "drawdown:paper"}
    sent = len(received)
    # five incidents and one message for the trader's two stop exits, on three channels each
    assert sent - before == 3 * 6
    generic = [b for p, b in received[before:] if p == "/generic"]
    stops = [b for b in generic if "stop-exit" in b["title"]]
    assert len(stops) == 1 and "2 stop exit(s) of trader paper" in stops[0]["title"]
    assert "BTC/USD" in stops[0]["message"] and "ETH/USD" in stops[0]["message"]
    for body in generic:  # every message names host, study, severity and type
        assert "| study mon |" in body["message"] and "host " in body["message"]
        assert " severity " in body["message"] and " type " in body["message"]
    behind = next(b for b in generic if "more than one bar behind" in b["title"])
    assert "ERROR incident" in behind["title"] and "| trader paper |" in behind["message"]
    assert run_checks(cfg, engine) == [] and len(received) == sent  # nothing twice
    # the active study changes: a new incident; the old ones are still open
    from cappuccino_core.common.config import write_active_study
    optuna.create_study(study_name="other", storage=storage)
    write_active_study(cfg.config_dir, "other")
    keys = {i.key for i in run_checks(load_config(cfg.config_dir), engine)}
    assert keys == {"ensemble-not-following"}
    assert cli.main(["monitor", "--config-dir", cfg.config_dir]) == 0
    # the service runs the same function as a daemon (what its unit's ExecStart names)
    from daemons import monitor as monitor_daemon
    assert monitor_daemon.main(["--config-dir", cfg.config_dir]) == 0
    assert "-m daemons.monitor" in (REPO / "units" / "cappuccino-monitor.service").read_text()


def test_a_failed_unit_alerts_once_with_its_result_and_resolves_once(tmp_path, pg_url, hook,
                                                                      monkeypatch):
    url, received = hook
    cfg, engine = make_env(tmp_path, pg_url, url, alerts={"urls": [apprise_json(url, "generic")]})
    unit = "cappuccino-ensemble-sync.service"
    # what systemd hands an OnFailure= unit (systemd.exec(5))
    monkeypatch.setenv("MONITOR_SERVICE_RESULT", "exit-code")
    monkeypatch.setenv("MONITOR_EXIT_CODE", "exited")
    monkeypatch.setenv("MONITOR_EXIT_STATUS", "2")
    for _ in range(3):  # a sync that fails every 10 minutes: one alert, not three
        assert cli.main(["alert", unit, "--config-dir", cfg.config_dir]) == 0
    (body,) = [b for _, b in received]
    assert f"ERROR unit-failed: {unit} failed: result exit-code, exit exited 2" in body["title"]
    assert "last journal lines:" in body["message"] and "| study mon |" in body["message"]
    with engine.begin() as conn:  # an hour on, still failing (no monitor ran): said again
        conn.execute(sa.text("UPDATE cappuccino_events SET ts = :t WHERE kind = 'incident'"),
                     {"t": datetime.now(timezone.utc) - timedelta(hours=2)})
    assert cli.main(["alert", unit, "--config-dir", cfg.config_dir]) == 0
    assert len(received) == 2
    received.pop()
    failed = {unit: {"state": "failed/failed", "restarts": 0}}
    assert run_checks(cfg, engine, failed) == []  # the monitor sees the same incident: quiet
    assert len(received) == 1
    run_checks(cfg, engine, {unit: {"state": "inactive/dead", "restarts": 0}})  # ran again
    assert len(received) == 2 and "INFO resolved" in received[1][1]["title"]
    assert unit in received[1][1]["message"]
    run_checks(cfg, engine, {unit: {"state": "inactive/dead", "restarts": 0}})
    assert len(received) == 2  # resolved once


def test_a_replay_never_notifies(tmp_path, pg_url, hook):
    """Its stop exits and troubles are history: recorded, never alerted; a live trader's are."""
    from cappuccino_core.trading.journal import REPLAY, Journal, StateKey, TraderState
    url, received = hook
    cfg, engine = make_env(tmp_path, pg_url, url, alerts={"urls": [apprise_json(url, "g")]})
    for name in ("replay", "paper"):
        Journal(engine, name).save_state(
            TraderState(mode=REPLAY if name == "replay" else "live"), StateKey.MODE)
        with engine.begin() as conn:
            conn.execute(equity_snapshots.insert().values(
                trader=name, ts=datetime.now(timezone.utc), equity=1e5, cash=1e5, positions={}))
        record_event(engine, name, "warning", "stop_exit", f"stop exit of {name}: BTC/USD")
        record_event(engine, name, "error", "degraded", f"degraded: {name}")
    run_checks(cfg, engine)
    bodies = [b for _, b in received]
    assert bodies and not any("replay" in b["title"] + b["message"] for b in bodies)
    assert {"stop-exit", "trader-degraded"} <= {b["title"].split(":")[0].split()[-1]
                                                 for b in bodies}


def test_channels_route_by_severity_and_type_tags(tmp_path, hook):
    url, received = hook
    cfg = load_config(write_config(tmp_path, {"alerts": {"urls": [
        apprise_json(url, "everything"),
        "critical,stop-exit=" + apprise_json(url, "pager"),
        "promotion=" + apprise_json(url, "news")]}}))
    send_alert(cfg, "stops", "2 exits", "warning", "stop-exit", trader="paper")
    send_alert(cfg, "db gone", "storage unreachable", "critical", "incident")
    send_alert(cfg, "v7", "new ensemble", "info", "ensemble-version")
    paths = [p for p, _ in received]
    assert paths.count("/everything") == 3 and paths.count("/pager") == 2
    assert "/news" not in paths
    with pytest.raises(ValueError, match="severity"):
        send_alert(cfg, "x", "y", "loud", "incident")


def test_a_daily_summary_once_a_day_at_the_configured_time(tmp_path, pg_url, hook, shared_data):
    from datetime import datetime, timezone

    from cappuccino_core.operations.summary import send_if_due
    url, received = hook
    cfg, engine = make_env(tmp_path, pg_url, url, alerts={
        "urls": [apprise_json(url, "summary")], "daily_summary_at": "08:00"})
    early = datetime.now(timezone.utc).replace(hour=7, minute=59)
    on_time = early.replace(hour=8, minute=3)
    with engine.begin() as conn:
        for hours_ago, eq in ((30, 100_000), (2, 101_500)):
            conn.execute(equity_snapshots.insert().values(
                trader="paper", ts=on_time - timedelta(hours=hours_ago),
                equity=eq, cash=eq, positions={}))
    record_event(engine, "paper", "warning", "stop_exit", "stop exit BTC/USD at 27,000")
    assert not send_if_due(cfg, engine, early) and not received  # not yet
    assert send_if_due(cfg, engine, on_time)
    assert not send_if_due(cfg, engine, on_time.replace(hour=9))  # once a day
    ((path, body),) = received
    assert path == "/summary" and "daily summary" in body["title"]
    text = body["message"]
    assert "trader paper: equity 101,500.00 (+1,500.00 in 24 h)" in text
    assert "1 stop exits" in text and "health:" in text


def test_the_old_alert_keys_say_what_to_write_instead(tmp_path):
    from cappuccino_core.common.config import ConfigError
    write_config(tmp_path, {"alerts": {"webhook_url": "https://hooks.example.com/x"}})
    with pytest.raises(ConfigError, match=r"alerts.webhook_url: .*now a URL in alerts.urls"):
        load_config(tmp_path)
