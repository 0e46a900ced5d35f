"""The operator's view: `status --json` with a documented schema and exit codes a monitoring
system can use (issue 15)."""

import json
import os
import stat
import time

import jsonschema
import pytest
import sqlalchemy as sa

from cappuccino_core import cli

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
    # nothing has run yet: a warning (exit 1, as every read-only command), and said so
    empty = write_config(tmp_path / "empty", {"paths": {"state_dir": str(tmp_path / "none")}})
    code, out = status_json(capsys, empty)
    assert code == 1 and out["health"]["level"] == "warning" and "no database" in out["error"]
    assert out["schema_version"] == 2 and "_" not in out["systemd"]["units"]
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
    code, out = status_json(capsys, cfg.config_dir)  # a replay is history, never behind
    assert code == 0 and out["traders"]["paper"]["mode"] == "replay"
    assert "lag_bars" not in out["traders"]["paper"]
    with engine.begin() as conn:  # the same journal as a live trader's
        conn.execute(sa.text("UPDATE cappuccino_trader_state SET value = :v "
                             "WHERE key = 'mode'"), {"v": json.dumps("live")})
    code, out = status_json(capsys, cfg.config_dir)
    assert code == 2 and any("bars behind" in p["message"] for p in out["health"]["problems"])
    assert out["traders"]["paper"]["positions"] >= 0
    assert cli.main(["status", "--config-dir", cfg.config_dir]) == 2
    text = capsys.readouterr().out  # the reasons in text mode too
    assert "health: CRITICAL" in text and "critical: trader paper is" in text


SCHEMAS = REPO / "docs" / "schemas"


def json_of(capsys, *args: str, schema: str) -> dict:
    """A command's --json output, checked against its documented schema."""
    assert cli.main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    jsonschema.validate(out, json.loads((SCHEMAS / f"{schema}.schema.json").read_text()))
    return out


def test_read_only_commands_speak_json_that_fits_their_schemas(tmp_path, shared_data, capsys):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = ["--config-dir", cfg.config_dir]
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--name", "paper",
                     *d]) == 0
    capsys.readouterr()
    studies = json_of(capsys, "study", "list", *d, schema="study-list")
    assert [s["name"] for s in studies["studies"]] == ["live"] and studies["studies"][0]["active"]
    assert studies["studies"][0]["counts"]["COMPLETE"] == 4
    ensemble = json_of(capsys, "ensemble", "show", *d, schema="ensemble-show")
    assert ensemble["version"] == 1 and len(ensemble["members"]) == 4
    status = json_of(capsys, "trader", "status", "--name", "paper", *d, schema="trader-status")
    assert status["mode"] == "replay" and status["last_bar"].startswith("2022-05-31")
    history = json_of(capsys, "trader", "history", "--limit", "3", *d, schema="trader-history")
    assert len(history["orders"]) == 3 and history["fills"] > 3


def test_read_only_exit_codes_are_the_documented_ones(tmp_path, shared_data, capsys):
    """0 done; 1 nothing to read yet or no such trader/trial/study; 2 a bad argument."""
    fresh = ["--config-dir", str(write_config(tmp_path / "fresh",
                                              {"paths": {"state_dir": str(tmp_path / "n")}}))]
    for command in (["status"], ["study", "list"], ["trader", "status"], ["trader", "history"],
                    ["ensemble", "show"], ["backtest", "--ensemble", "current"],
                    ["report", "--out", str(tmp_path / "r.html")]):
        assert cli.main([*command, *fresh]) == 1, command
        assert not (tmp_path / "n").exists() or not list((tmp_path / "n").rglob("*.db"))
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = ["--config-dir", cfg.config_dir]
    capsys.readouterr()
    for command in (["trader", "status", "--name", "nosuch"],
                    ["trader", "history", "--name", "nosuch"]):
        assert cli.main([*command, *d]) == 1, command
        assert "trader 'nosuch' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        cli.main(["trader", "history", "--limit", "-1", *d])
    assert bad.value.code == 2


def test_the_monitor_writes_prometheus_metrics_a_parser_reads(tmp_path, shared_data, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--name", "paper",
                     "--config-dir", cfg.config_dir]) == 0
    path = cfg.state_dir / "metrics" / "cappuccino.prom"
    old_umask = os.umask(0o077)  # the units' UMask=
    try:
        assert cli.main(["monitor", "--config-dir", cfg.config_dir]) == 0
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755  # node_exporter runs as
    assert stat.S_IMODE(path.stat().st_mode) == 0o644        # another user
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    assert "cappuccino_trader_equity" not in families or not families[
        "cappuccino_trader_equity"].samples  # a replay is history: no live trader metrics
    assert next(iter(families["cappuccino_health_level"].samples)).value < 2
    # the same journal as a live trader's (the mode row of a live trader)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE cappuccino_trader_state SET value = :v "
                             "WHERE key = 'mode'"), {"v": json.dumps("live")})
    assert cli.main(["monitor", "--config-dir", cfg.config_dir]) == 0
    assert f"metrics: {path}" in capsys.readouterr().out
    assert not list(path.parent.glob(".*.tmp"))  # written whole, renamed into place
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    ran = next(iter(families["cappuccino_monitor_last_run_timestamp_seconds"].samples)).value
    assert abs(ran - time.time()) < 120
    assert next(iter(families["cappuccino_monitor_checks_ok"].samples)).value == 1
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
    from cappuccino_core.operations.metrics import FAMILIES
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs and all(any(name in e for name in FAMILIES) for e in exprs)


# --- the journal -------------------------------------------------------------------------------

def parse_datagram(data: bytes) -> dict[str, str]:
    """journald's native protocol, read back (the inverse of service.journal_datagram)."""
    import struct
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            fields[key.decode()] = value.decode()
            i = end + 1
        else:
            size = struct.unpack("<Q", data[end + 1:end + 9])[0]
            fields[line.decode()] = data[end + 9:end + 9 + size].decode()
            i = end + 9 + size + 1
    return fields


def test_one_journal_entry_per_message_tracebacks_included(tmp_path):
    import logging
    import socket
    from cappuccino_core.common.service import JournalHandler
    path = str(tmp_path / "journal.sock")
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(path)
    journal.settimeout(2)
    handler = JournalHandler(path)
    log = logging.getLogger("cappuccino.test")
    log.addHandler(handler)
    try:
        log.warning("first line\nsecond line")
        try:
            raise ValueError("the cause")
        except ValueError:
            log.error("it failed", exc_info=True)
        first, second = (parse_datagram(journal.recv(65536)) for _ in range(2))
    finally:
        log.removeHandler(handler)
        handler.close()
        journal.close()
    assert first["MESSAGE"] == "cappuccino.test: first line\nsecond line"
    assert first["PRIORITY"] == "4" and first["SYSLOG_IDENTIFIER"] == "cappuccino"
    assert second["PRIORITY"] == "3" and second["MESSAGE"].startswith("cappuccino.test: it failed")
    assert "Traceback" in second["MESSAGE"] and "ValueError: the cause" in second["MESSAGE"]


def test_only_a_stderr_that_is_the_journal_gets_journal_output(tmp_path):
    """systemd's rule: JOURNAL_STREAM must name stderr's own device and inode; inheriting the
    variable (a terminal, a file) gives plain lines, never `<4>` prefixes."""
    import os
    import subprocess
    import sys
    probe = ("import logging; from cappuccino_core.common.service import setup_logging, "
             "stderr_is_the_journal; setup_logging(); print(stderr_is_the_journal()); "
             "logging.getLogger('probe').warning('first line\\nsecond line')")
    out_file = tmp_path / "stderr.txt"
    other = tmp_path / "other"
    other.write_text("")
    for stream, expected in ((other, "False"), (out_file, "True")):
        out_file.write_text("")
        st = os.stat(stream)
        with open(out_file, "a") as err:
            result = subprocess.run([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                                    stderr=err, text=True, cwd=REPO,
                                    env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}",
                                         "INVOCATION_ID": "x"})
        assert result.stdout.strip() == expected
        written = out_file.read_text()
        if expected == "False":  # plain lines for a person
            assert "<4>" not in written and "WARNING probe: first line" in written
        elif os.path.exists("/run/systemd/journal/socket"):  # sent to journald, not the stream
            assert written == ""
        else:  # no journald here: the stream with priorities, still the journal's format
            assert "<4>probe: first line" in written


# --- the report, as a person sees it ------------------------------------------------------------

def chromium() -> str | None:
    import os
    import shutil
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("CAPPUCCINO_REQUIRE_BROWSER_TESTS") == "1":
        pytest.fail("the browser test is required here, but chromium is not installed")
    return found


def screenshot(html_file, png, width=1000, height=2400) -> bytes:
    """Headless Chromium's picture of a local page (flags as the machine's notes advise)."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        f"--screenshot={png}", f"file://{html_file}"],
                       capture_output=True, timeout=120, check=True)
    return png.read_bytes()


def test_the_report_reads_at_a_glance_and_renders_in_a_browser(tmp_path, shared_data):
    import re
    import struct
    from xml.etree import ElementTree
    if chromium() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = ["--config-dir", cfg.config_dir]
    assert cli.main(["paper", "--replay", "--from", LUNA[0], "--to", LUNA[1], "--name", "paper",
                     *d]) == 0
    out = tmp_path / "report.html"
    assert cli.main(["report", "--out", str(out), "--from", LUNA[0], "--to", LUNA[1], *d]) == 0
    page = out.read_text()
    svgs = re.findall(r"<svg .*?</svg>", page, flags=re.S)
    assert len(svgs) >= 7
    for svg in svgs:  # every chart: labelled axes with ticks, and a legend
        root = ElementTree.fromstring(svg)
        groups = {g.get("class"): g for g in root.iter("{http://www.w3.org/2000/svg}g")}
        for axis in ("x-axis", "y-axis"):
            labels = [t.text for t in groups[axis].iter("{http://www.w3.org/2000/svg}text")
                      if t.get("class") == "axis-label"]
            ticks = [t.text for t in groups[axis].iter("{http://www.w3.org/2000/svg}text")
                     if t.get("class") != "axis-label"]
            assert labels and labels[0] and len(ticks) >= 2, (axis, svg[:200])
        assert list(groups["legend"].iter("{http://www.w3.org/2000/svg}text"))
    assert re.search(r">2022-05-\d\d<", page)  # dates on the time axes
    assert re.search(r">\d{2,3}\.\dk<", page) and "1.2e+05" not in page  # k ticks, no 1e5
    assert re.search(r">-?\d+\.\d%<", page)  # drawdown in percent
    assert ">trial number<" in page  # the optimisation history by trial number
    assert "Open positions and their stops" in page and "stop level" in page
    assert re.search(r"<td>[+-][\d,]+\.\d\d</td>", page)  # a fill's realised P&L
    assert re.search(r"total return</td><td>[+-]\d+\.\d\d%", page)  # metrics in percent
    png = screenshot(out, tmp_path / "report.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1000, 2400) and len(png) > 30_000  # a page, not a blank


def _promtool() -> str:
    import shutil
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CAPPUCCINO_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool required here (.ci/run unpacks it from Debian's prometheus)")
        pytest.skip("promtool not installed (Debian's prometheus package has it)")
    return found


def test_the_shipped_alert_rules_pass_promtool_and_fire_as_meant():
    import subprocess
    promtool = _promtool()
    checked = subprocess.run([promtool, "check", "rules", "config/prometheus-rules.yml"],
                             cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "prometheus-rules.test.yml"],
                            cwd=REPO / "tests", capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    from cappuccino_core.operations.metrics import FAMILIES
    rules = (REPO / "config" / "prometheus-rules.yml").read_text()
    used = {name for name in FAMILIES if name in rules}
    assert "cappuccino_monitor_last_run_timestamp_seconds" in used and len(used) >= 6


def test_a_monitor_run_that_cannot_check_writes_critical_metrics_and_fails(tmp_path, capsys):
    """Storage down: the last good file must not stay in place saying health OK."""
    import subprocess

    from prometheus_client.parser import text_string_to_metric_families
    state = tmp_path / "state"
    path = state / "metrics" / "cappuccino.prom"
    path.parent.mkdir(parents=True)
    path.write_text("cappuccino_health_level 0\n")  # the last good run's
    d = write_config(tmp_path / "etc", {"paths": {"state_dir": str(state)},
                                        "storage": {"url": "postgresql://nobody@127.0.0.1:9/x"}})
    assert cli.main(["monitor", "--config-dir", str(d)]) == 1
    text = path.read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert next(iter(families["cappuccino_health_level"].samples)).value == 2
    assert next(iter(families["cappuccino_monitor_checks_ok"].samples)).value == 0
    reasons = {s.labels["reason"] for s in families["cappuccino_health_problem"].samples}
    assert any("the monitor's checks could not run" in r for r in reasons), reasons
    checked = subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True,
                             text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
