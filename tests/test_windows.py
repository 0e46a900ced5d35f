"""Replay, backtest, report, import and the read-only commands: the same words mean the same
bars, and nothing falls back silently."""

import os
import json
import re
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from cappuccino_core import cli
from cappuccino_core.common.config import load_config
from cappuccino_core.data.csv_source import CsvSource
from cappuccino_core.data.bars import DataError

from conftest import REPO, trials, wait_for, write_config
from test_trading import setup_trader_env

WINDOW = ["--from", "2022-05-01T03:00", "--to", "2022-06-01"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def final_equity(text: str, label: str = "final equity") -> float:
    return float(re.search(rf"{label} ([\d,]+\.\d\d)", text)[1].replace(",", ""))


def report_equities(path) -> dict[str, float]:
    html = open(path).read()
    return {k: float(v.replace(",", ""))
            for k, v in re.findall(r"class='(paper|backtest)-final'>([\d,.]+)<", html)}


def test_replay_backtest_and_report_agree_in_any_order_in_one_state_dir(tmp_path, shared_data,
                                                                        capsys):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = ["--config-dir", cfg.config_dir]
    # backtest first, then the replay, then the report
    code, backtest_out, _ = run(capsys, "backtest", "--ensemble", "current", *WINDOW, *d)
    assert code == 0
    code, replay_out, _ = run(capsys, "paper", "--replay", *WINDOW, *d)
    assert code == 0
    code, _, _ = run(capsys, "report", "--out", str(tmp_path / "r1.html"), *WINDOW, *d)
    assert code == 0
    equities = [final_equity(backtest_out), final_equity(replay_out),
                *report_equities(tmp_path / "r1.html").values()]
    assert len(equities) == 4  # backtest, replay, and the report's paper and backtest figures
    assert max(equities) / min(equities) - 1 < 1e-4, equities
    # the same words, the same bars: the first decision is the first bar at or after --from
    for text in (backtest_out, replay_out):
        assert "2022-05-01 03:00 .. 2022-05-31 23:00 UTC, 740 decisions" in text
    # a second replay under the same name is refused: it would inherit the first one's book
    code, _, err = run(capsys, "paper", "--replay", "--from", "2023-06-01", "--to", "2023-07-01",
                       *d)
    assert code == 1 and "already has state" in err and "--reset" in err
    # another window under another name first, then the first window again, reset: the same
    code, other_out, _ = run(capsys, "paper", "--replay", "--from", "2022-03-01", "--to",
                             "2022-04-01", "--name", "march", *d)
    assert code == 0 and "2022-03-01 00:00" in other_out
    code, again_out, _ = run(capsys, "paper", "--replay", *WINDOW, "--reset", *d)
    assert code == 0 and final_equity(again_out) == pytest.approx(equities[1], rel=1e-9)
    code, _, _ = run(capsys, "report", "--out", str(tmp_path / "r2.html"), "--trader", "replay",
                     *WINDOW, *d)
    assert report_equities(tmp_path / "r2.html")["paper"] == pytest.approx(equities[1], rel=1e-9)


def test_with_stops_checked_at_the_close_replay_and_backtest_still_agree(tmp_path, shared_data,
                                                                         capsys):
    """`risk.stop_check: close`: the trader and the environment use the one rule, so a replay
    and a backtest of the falling month end on the same equity, and stops still fire."""
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data, risk={"stop_check": "close"})
    d = ["--config-dir", cfg.config_dir]
    code, backtest_out, _ = run(capsys, "backtest", "--ensemble", "current", "--json",
                                *WINDOW, *d)
    assert code == 0
    backtest = json.loads(backtest_out)
    code, replay_out, _ = run(capsys, "paper", "--replay", *WINDOW, *d)
    assert code == 0
    assert final_equity(replay_out) == pytest.approx(backtest["final_equity"], rel=1e-4)
    assert backtest["metrics"]["stops"] > 0


def test_without_from_every_command_covers_the_held_out_window(tmp_path, shared_data, capsys):
    cfg, engine, study = setup_trader_env(tmp_path, shared_data)
    study.set_user_attr("train_end", "2023-11-01 00:00:00+00:00")  # as the first worker does
    d = ["--config-dir", cfg.config_dir]
    code, out, _ = run(capsys, "backtest", "--ensemble", "current", *d)
    assert code == 0 and "2023-11-01 00:00 .." in out and "held-out window of study live" in out
    code, out, _ = run(capsys, "paper", "--replay", *d)
    assert code == 0 and "2023-11-01 00:00 .." in out and "held-out window of study live" in out
    with pytest.raises(SystemExit) as refused:  # refused by the argument parser, at once
        run(capsys, "backtest", "--ensemble", "current", "--from", "garbage", *d)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "--from: expected a date" in err
    assert "Traceback" not in err


def test_report_and_trader_commands_find_the_trader_that_has_data(tmp_path, shared_data, capsys):
    cfg, engine, _ = setup_trader_env(tmp_path, shared_data)
    d = ["--config-dir", cfg.config_dir]
    code, _, err = run(capsys, "trader", "status", *d)
    assert code == 1 and "No trader has equity history" in err
    assert run(capsys, "paper", "--replay", *WINDOW, "--name", "demo", *d)[0] == 0
    code, out, err = run(capsys, "trader", "status", *d)
    assert code == 0 and "trader demo (replay):" in out and "Showing trader 'demo'" in err
    code, out, _ = run(capsys, "trader", "history", *d)
    assert code == 0 and "realised P&L" in out
    code, _, _ = run(capsys, "report", "--out", str(tmp_path / "r.html"), *WINDOW, *d)
    html = open(tmp_path / "r.html").read()
    assert "Paper trading (demo)" in html and "starting capital 100,000.00" in html
    code, out, _ = run(capsys, "status", *d)
    assert "trader demo (replay): equity" in out


def test_read_only_commands_create_nothing_and_say_so(tmp_path, capsys):
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")}},
                       active_study="s")
    for args in (["status"], ["study", "list"], ["trader", "status"], ["trader", "history"]):
        code, out, err = run(capsys, *args, "--config-dir", str(etc))
        assert code == 1, args  # nothing has run yet: status says warning, as the others
        assert "no database at" in out + err and "nothing has run" in out + err, args
    assert not (tmp_path / "state").exists()  # no directory, no file, no migration


def test_commands_that_need_no_model_start_without_torch(tmp_path):
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")}})
    probe = ("import sys, time; t = time.monotonic(); from cappuccino_core import cli; "
             "code = cli.main(sys.argv[1:]); "
             "print('torch' in sys.modules, round(time.monotonic() - t, 2), code)")
    for args in (["config", "check"], ["status"], ["study", "list"]):
        out = subprocess.run([sys.executable, "-c", probe, *args, "--config-dir", str(etc)],
                             capture_output=True, text=True, cwd=REPO)
        torch_loaded = out.stdout.split()[-3]
        assert torch_loaded == "False", (args, out.stdout, out.stderr)


def test_csv_headers_in_any_case_and_the_header_shown_when_wrong(tmp_path):
    src = tmp_path / "csv"
    src.mkdir()
    rows = "\n".join(f"2024-01-01 {h:02d}:00:00,1,2,0.5,1.5,10" for h in range(5))
    (src / "BTCUSDT_1h.csv").write_text("Date,Open,High,Low,Close,Volume\n" + rows + "\n")
    (src / "ETHUSDT_1h.csv").write_text("when,open,high,low,close,volume\n" + rows + "\n")
    source = CsvSource(src, "1h", 3600)
    df = source.fetch("BTC/USD", pd.Timestamp("2024-01-01", tz="UTC"),
                      pd.Timestamp("2024-01-02", tz="UTC"))
    assert len(df) == 4  # the last row may be unfinished: dropped
    with pytest.raises(DataError, match="its header is when,open,high,low,close,volume"):
        source.fetch("ETH/USD", pd.Timestamp("2024-01-01", tz="UTC"),
                     pd.Timestamp("2024-01-02", tz="UTC"))


def test_a_csv_file_read_again_once_it_grows_and_a_partial_last_line_is_no_error(tmp_path):
    src = tmp_path / "csv"
    src.mkdir()
    path = src / "BTCUSDT_1h.csv"
    rows = [f"2024-01-01 {h:02d}:00:00,1,2,0.5,1.5,10" for h in range(5)]
    path.write_text("date,open,high,low,close,volume\n" + "\n".join(rows) + "\n2024-01-01 05:0")
    source = CsvSource(src, "1h", 3600)
    span = (pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-01-02", tz="UTC"))
    assert len(source.fetch("BTC/USD", *span)) == 5  # the half-written line is dropped
    more = [f"2024-01-01 {h:02d}:00:00,1,2,0.5,1.5,10" for h in range(5, 9)]
    path.write_text("date,open,high,low,close,volume\n" + "\n".join(rows + more) + "\n")
    assert len(source.fetch("BTC/USD", *span)) == 8  # appended rows are seen


def test_data_fetch_from_another_directory_is_what_training_then_reads(tmp_path, shared_data,
                                                                       capsys):
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")},
                                          "data": {"symbols": ["BTC/USD", "ETH/USD"]}})
    (etc / "cappuccino.yaml").write_text("# my notes\n" + (etc / "cappuccino.yaml").read_text())
    assert load_config(etc).data.csv_path is None  # would be the bundled sample
    code, out, _ = run(capsys, "data", "fetch", "--source", "csv", "--path", str(shared_data),
                       "--start", "2022-01-01", "--end", "2022-01-08", "--config-dir", str(etc))
    assert code == 0 and "data.csv_path" in out
    cfg = load_config(etc)
    assert cfg.data.csv_path == str(shared_data.resolve())
    assert "# my notes" in (etc / "cappuccino.yaml").read_text()  # the operator's file kept
    from cappuccino_core.data import load_bars
    bars = load_bars(cfg, start="2022-01-01", end="2022-01-08")
    assert bars.index[0] == pd.Timestamp("2022-01-01", tz="UTC")  # the sample starts in 2023


def test_sigterm_to_train_stops_its_workers_and_waits(tmp_path, pg_url):
    etc = write_config(tmp_path / "etc", {
        "storage": {"url": pg_url}, "paths": {"state_dir": str(tmp_path / "state")},
        "training": {"total_timesteps": 50_000_000, "n_envs": 16, "cv": "walk_forward",
                     "cv_groups": 3, "cv_test_groups": 1}})
    exe = os.path.join(os.path.dirname(sys.executable), "cappuccino")
    output = tmp_path / "train.log"  # a file, not a pipe: nothing the workers say can block
    with open(output, "w") as sink:
        proc = subprocess.Popen([exe, "train", "--study", "term", "--n-trials", "3", "--workers",
                                 "2", "--config-dir", str(etc)], stdout=sink,
                                stderr=subprocess.STDOUT, text=True)
    from cappuccino_core.storage.database import make_optuna_storage
    try:
        study = wait_for(lambda: _load(pg_url, "term"), 60, "the study")
        try:  # (seen once over 120 s on a slow, busy 2-core machine)
            wait_for(lambda: len(trials(study, optuna.trial.TrialState.RUNNING)) == 2, 240,
                     "both workers running a trial")
        except pytest.fail.Exception:
            print(output.read_text())  # shown with the failure
            raise
        children = _children(proc.pid)
        assert len(children) == 2
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # a failure above: no worker may go on training for the
            for pid in [proc.pid] + _children(proc.pid):  # rest of the suite
                os.kill(pid, signal.SIGKILL)
            proc.wait()
    out = output.read_text()
    assert "stopping the workers" in out and "Traceback" not in out
    assert proc.returncode == 143, out  # stopped by SIGTERM, as a script can tell
    time.sleep(0.5)
    assert not [c for c in children if os.path.exists(f"/proc/{c}")], "a worker outlived it"
    study = optuna.load_study(study_name="term", storage=make_optuna_storage(pg_url))
    assert not trials(study, optuna.trial.TrialState.RUNNING)


def _load(url, name):
    from cappuccino_core.storage.database import make_optuna_storage
    try:
        return optuna.load_study(study_name=name, storage=make_optuna_storage(url))
    except KeyError:
        return None


def _children(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    return [int(c) for c in open(path).read().split()] if os.path.exists(path) else []


def test_data_end_bounds_what_training_and_backtests_read(tmp_path, shared_data):
    from cappuccino_core.data import load_bars
    etc = write_config(tmp_path / "etc", {
        "paths": {"state_dir": str(tmp_path / "state")},
        "data": {"csv_path": str(shared_data), "symbols": ["BTC/USD", "ETH/USD"],
                 "start": "2022-01-01", "end": "2022-03-01"}})
    bars = load_bars(load_config(etc))
    assert bars.index[0] == pd.Timestamp("2022-01-01", tz="UTC")
    assert bars.index[-1] == pd.Timestamp("2022-02-28 23:00", tz="UTC")


def test_a_database_without_our_tables_is_said_plainly(tmp_path, pg_url, capsys):
    etc = write_config(tmp_path / "etc", {"storage": {"url": pg_url},
                                          "paths": {"state_dir": str(tmp_path / "state")}})
    code, out, err = run(capsys, "study", "list", "--config-dir", str(etc))
    assert code == 1 and "has no Cappuccino tables yet" in err
    import sqlalchemy as sa
    from cappuccino_core.storage.database import make_engine
    engine = make_engine(pg_url)
    with engine.connect() as conn:  # and nothing was created by asking
        assert not sa.inspect(conn).get_table_names()
    engine.dispose()
