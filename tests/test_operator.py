"""The operator's view: `status --json` with a documented schema and exit codes a monitoring
system can use (issue 15)."""

import dataclasses
import json

import jsonschema
import pytest

from cappuccino_core import cli
from cappuccino_core.config import load_config

from conftest import REPO, write_config
from test_trading import LUNA, setup_trader_env

SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())


def status_json(capsys, config_dir) -> tuple[int, dict]:
    code = cli.main(["status", "--json", "--config-dir", str(config_dir)])
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, SCHEMA)  # every real output fits the documented schema
    return code, out


def test_status_json_fits_its_schema_and_its_exit_code_is_the_health(tmp_path, shared_data,
                                                                     capsys):
    # nothing has run yet: critical (the storage cannot be read), and said so
    empty = write_config(tmp_path / "empty", {"paths": {"state_dir": str(tmp_path / "none")}})
    code, out = status_json(capsys, empty)
    assert code == 2 and out["health"]["level"] == "critical" and "no database" in out["error"]
    assert out["schema_version"] == 1 and "_" not in out["systemd"]["units"]
    # an ensemble that follows the active study, no trader: ok
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    code, out = status_json(capsys, cfg.config_dir)
    assert (code, out["health"]) == (0, {"level": "ok", "problems": []})
    assert out["ensemble"]["version"] == 1 and out["traders"] == {}
    assert "best" not in out["training"]["counts"]  # counts are counts
    # a member trained under other risk rules, served under `warn`: warning
    warn_dir = write_config(tmp_path / "warn", {
        "paths": {"state_dir": str(cfg.state_dir)},
        "data": {"csv_path": str(shared_data), "symbols": list(cfg.data.symbols)},
        "ensemble": {"top_n": 4, "min_members": 1, "risk_mismatch": "warn"},
        "risk": {"trailing_stop_pct": 0.12}}, active_study="live")
    code, out = status_json(capsys, warn_dir)
    assert code == 1 and out["health"]["level"] == "warning"
    assert "trained under other risk rules" in out["health"]["problems"][0]["message"]
    # the live trader far behind (a replay of 2022 under its name): critical
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--name", "paper",
                     "--config-dir", cfg.config_dir]) == 0
    capsys.readouterr()
    code, out = status_json(capsys, cfg.config_dir)
    assert code == 2 and any("bars behind" in p["message"] for p in out["health"]["problems"])
    assert out["traders"]["paper"]["positions"] >= 0


def test_the_monitor_writes_prometheus_metrics_a_parser_reads(tmp_path, shared_data, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--name", "paper",
                     "--config-dir", cfg.config_dir]) == 0
    assert cli.main(["monitor", "--config-dir", cfg.config_dir]) == 0
    path = cfg.state_dir / "metrics" / "cappuccino.prom"
    assert f"metrics: {path}" in capsys.readouterr().out
    assert not list(path.parent.glob(".*.tmp"))  # written whole, renamed into place
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    sample = lambda name, **labels: next(  # noqa: E731
        s.value for s in families[name].samples if all(s.labels.get(k) == v
                                                       for k, v in labels.items()))
    status = json.loads(_status_json(cfg))
    paper = status["traders"]["paper"]
    assert sample("cappuccino_trader_equity", trader="paper") == pytest.approx(paper["equity"])
    assert sample("cappuccino_trader_drawdown_ratio", trader="paper") == pytest.approx(
        paper["drawdown"])
    assert sample("cappuccino_trader_lag_bars", trader="paper") > 2
    assert sample("cappuccino_ensemble_version", study="live") == 1
    assert sample("cappuccino_trials", study="live", state="COMPLETE") == 4
    assert sample("cappuccino_health_level") == 2  # the trader is behind: critical
    assert families["cappuccino_trader_equity"].type == "gauge"


def _status_json(cfg) -> str:
    import io
    from contextlib import redirect_stdout
    out = io.StringIO()
    with redirect_stdout(out):
        cli.main(["status", "--json", "--config-dir", cfg.config_dir])
    return out.getvalue()


def test_the_example_grafana_dashboard_reads_our_metrics():
    from cappuccino_core.metrics import FAMILIES
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(any(name in e for name in FAMILIES) for e in exprs)
