"""Prometheus metrics, for the dashboards operators already run.

`cappuccino monitor` (every 5 minutes) writes them in node_exporter's textfile-collector format
to `monitor.metrics_textfile` (default `<state_dir>/metrics/cappuccino.prom`): point
node_exporter's `--collector.textfile.directory` at that directory. The file is written whole
and renamed into place, as the collector's documentation asks, so a scrape never reads half a
file. Everything comes from `status.collect`: the metrics and `cappuccino status` never disagree.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..common.files import atomic_write_text
from .status import LEVELS

# name -> (type, help)
FAMILIES = {
    "cappuccino_health_level": ("gauge", "0 ok, 1 warning, 2 critical (cappuccino status)"),
    "cappuccino_health_problem": ("gauge", "1 for each problem behind the health level, its "
                                           "reason in a label"),
    "cappuccino_monitor_last_run_timestamp_seconds": (
        "gauge", "When the monitor last wrote this file (stale: the monitor is not running)"),
    "cappuccino_monitor_checks_ok": ("gauge", "1 when the monitor's last run could run its checks"),
    "cappuccino_trader_equity": ("gauge", "Equity of a trader, account currency"),
    "cappuccino_trader_drawdown_ratio": ("gauge", "Equity below its peak, a fraction"),
    "cappuccino_trader_positions": ("gauge", "Open positions of a trader"),
    "cappuccino_trader_lag_bars": ("gauge", "Bars since the last bar a trader processed closed"),
    "cappuccino_trader_last_bar_timestamp_seconds": ("gauge", "Open time of the last bar traded"),
    "cappuccino_ensemble_version": ("gauge", "Version of the current ensemble"),
    "cappuccino_ensemble_age_seconds": ("gauge", "Age of the current ensemble"),
    "cappuccino_ensemble_members": ("gauge", "Members of the current ensemble"),
    "cappuccino_ensemble_follows_active_study": ("gauge", "1 when the ensemble follows the study"),
    "cappuccino_trials": ("gauge", "Trials of the active study by state"),
    "cappuccino_study_best_value": ("gauge", "Best objective value of the active study"),
    "cappuccino_unit_active": ("gauge", "1 when the systemd unit is active"),
    "cappuccino_unit_restarts_total": ("counter", "Restarts of the systemd unit (NRestarts)"),
}


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(status: dict, checks_ok: bool = True) -> str:
    """The status as Prometheus text exposition format (live traders only: a replay is
    history)."""
    samples: dict[str, list[tuple[dict, float]]] = {name: [] for name in FAMILIES}

    def add(name: str, value, **labels) -> None:
        if value is not None:
            samples[name].append((labels, float(value)))

    add("cappuccino_health_level", LEVELS.index(status["health"]["level"]))
    for problem in status["health"]["problems"]:
        add("cappuccino_health_problem", 1, level=problem["level"],
            reason=problem["message"][:200])
    add("cappuccino_monitor_last_run_timestamp_seconds", time.time())
    add("cappuccino_monitor_checks_ok", int(checks_ok))
    for trader, t in status["traders"].items():
        if t["mode"] == "replay":
            continue
        add("cappuccino_trader_equity", t["equity"], trader=trader)
        add("cappuccino_trader_drawdown_ratio", t["drawdown"], trader=trader)
        add("cappuccino_trader_positions", t["positions"], trader=trader)
        add("cappuccino_trader_lag_bars", t.get("lag_bars"), trader=trader)
        if t["last_bar"]:
            from datetime import datetime
            add("cappuccino_trader_last_bar_timestamp_seconds",
                datetime.fromisoformat(t["last_bar"]).timestamp(), trader=trader)
    e = status["ensemble"] or {}
    if e.get("version") is not None:
        add("cappuccino_ensemble_version", e["version"], study=e["study"])
        add("cappuccino_ensemble_age_seconds", e["age_hours"] * 3600, study=e["study"])
        add("cappuccino_ensemble_members", e["members"], study=e["study"])
        add("cappuccino_ensemble_follows_active_study", int(e["follows_active_study"]),
            study=e["study"])
    training, study = status["training"] or {}, status["active_study"]
    for state, count in training.get("counts", {}).items():
        add("cappuccino_trials", count, study=study, state=state)
    add("cappuccino_study_best_value", training.get("best"), study=study)
    for unit, u in status["systemd"]["units"].items():
        add("cappuccino_unit_active", int(u["state"].startswith("active")), unit=unit)
        add("cappuccino_unit_restarts_total", u["restarts"], unit=unit)
    lines = []
    for name, (kind, help_text) in FAMILIES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for labels, value in samples[name]:
            inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{inner}}} {value!r}" if inner else f"{name} {value!r}")
    return "\n".join(lines) + "\n"


def textfile_path(cfg) -> Path:
    return Path(cfg.monitor.metrics_textfile or cfg.state_dir / "metrics" / "cappuccino.prom")


def write_textfile(path: Path, text: str) -> Path:
    """Written whole under a temporary name in the same directory, then renamed; readable by
    node_exporter, which runs as another user: the directory 0755 and the file 0644 whatever
    the umask (the units run with UMask=0077)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.parent.chmod(0o755)
    except PermissionError:  # someone else's directory: its owner decides who reads it
        pass
    return atomic_write_text(path, text, 0o644)
