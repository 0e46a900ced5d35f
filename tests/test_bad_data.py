"""Market data that is not what it says is refused with one line naming the symbol and file,
exit 1, and no configuration change; a damaged cache heals. Generated over the faults: each
case builds a data directory from a good one and one fault."""

import gzip
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cappuccino_core import cli
from cappuccino_core.data.cache import BarCache
from cappuccino_core.data.csv_source import CsvSource

from test_data import good_rows

RANGE = ["--start", "2023-01-01", "--end", "2023-01-03"]


def csv_text(base: str, quote: str, rows) -> str:
    lines = ["date,open,high,low,close,volume,ticker"]
    lines += [f"{d},{o},{h},{lo},{c},{v},{base}{quote}" for d, o, h, lo, c, v in rows]
    return "\n".join(lines) + "\n"


def spiked(rows, at: int, factor: float):
    rows = list(rows)
    d, o, h, lo, c, v = rows[at]
    rows[at] = (d, o, h * factor, lo, c * factor, v)  # up at the close, back at the next bar
    return rows


def _write(directory, name: str, text: str, gz: bool = False) -> None:
    path = directory / name
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)


# each fault: (symbols asked for, files written, what the one line must say)
FAULTS = {
    "another quote's prices": (["ETH/BTC"], [("ETHUSDT_1h.csv", "ETH", "USDT", 48, False)],
                               "ETH/BTC: no file ETHBTC_1h"),
    ".csv and .csv.gz differ": (["BTC/USD"], [("BTCUSDT_1h.csv", "BTC", "USDT", 48, False),
                                              ("BTCUSDT_1h.csv.gz", "BTC", "USDT", 47, True)],
                                "hold different bars"),
    "USD and USDT differ": (["BTC/USD"], [("BTCUSD_1h.csv", "BTC", "USD", 48, False),
                                          ("BTCUSDT_1h.csv", "BTC", "USDT", 40, False)],
                            "hold different bars"),
    "a header and no rows": (["BTC/USD"], [("BTCUSDT_1h.csv", "BTC", "USDT", 0, False)],
                             "BTC/USD: .* has no usable rows"),
    "a 1000x one-bar spike": (["BTC/USD"], [("BTCUSDT_1h.csv", "BTC", "USDT", "spike", False)],
                              "BTC/USD 2023-01-01 10:00:00\\+00:00: a jump of more than 5x"),
    "a damaged gzip": (["BTC/USD"], [("BTCUSDT_1h.csv.gz", "BTC", "USDT", "damaged", True)],
                       "BTC/USD: .*BTCUSDT_1h.csv.gz is damaged or not gzip"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_data_that_is_not_what_it_says_is_refused_in_one_line(fault, tmp_path, config_dir,
                                                              capsys):
    symbols, files, said = FAULTS[fault]
    data = tmp_path / "data"
    data.mkdir()
    for name, base, quote, rows, gz in files:
        if rows == "spike":
            rows = spiked(good_rows(48), 10, 1000.0)
        elif rows == "damaged":
            (data / name).write_bytes(gzip.compress(csv_text(base, quote, good_rows(48))
                                                    .encode())[:-40])
            continue
        else:
            rows = good_rows(rows) if rows else []
        _write(data, name, csv_text(base, quote, rows), gz)
    before = (config_dir / "cappuccino.yaml").read_text()
    code = cli.main(["data", "fetch", "--config-dir", str(config_dir), "--source", "csv",
                     "--path", str(data), "--symbols", *symbols, *RANGE])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert pd.Series(err).str.contains(said).any(), err
    assert (config_dir / "cappuccino.yaml").read_text() == before  # nothing switched to it


def test_identical_copies_of_one_symbols_bars_are_fine(tmp_path):
    text = csv_text("BTC", "USDT", good_rows(48))
    _write(tmp_path, "BTCUSDT_1h.csv", text)
    _write(tmp_path, "BTCUSDT_1h.csv.gz", text, gz=True)
    _write(tmp_path, "BTCUSD_1h.csv", text.replace("BTCUSDT", "BTCUSD"))
    src = CsvSource(tmp_path, "1h", 3600, max_jump=5.0)
    lo, hi = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2023-01-03", tz="UTC")
    assert len(src.fetch("BTC/USD", lo, hi)) == 47  # the last (unfinished) row dropped


@pytest.mark.parametrize("args, said", [
    (["--symbols", "BTC/USD", "BTC/USD"], "--symbols: expected each symbol once"),
    (["--start", "2023-01-05", "--end", "2023-01-02"], "--start: expected a time before"),
    (["--start", "yesterday-ish"], "--start: expected a date or time"),
])
def test_bad_fetch_arguments_exit_2_in_one_line(args, said, config_dir, capsys):
    with pytest.raises(SystemExit) as argparse_exit:
        code = cli.main(["data", "fetch", "--config-dir", str(config_dir), *args])
        raise SystemExit(code)
    err = capsys.readouterr().err.strip().splitlines()
    assert argparse_exit.value.code == 2 and said in err[-1], err


def test_a_damaged_cache_file_is_named_dropped_and_fetched_again(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    _write(data, "BTCUSDT_1h.csv", csv_text("BTC", "USDT", good_rows(48)))
    cache = BarCache(tmp_path / "cache", CsvSource(data, "1h", 3600), "1h", 3600, 10.0)
    lo, hi = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2023-01-03", tz="UTC")
    now = pd.Timestamp("2024-01-01", tz="UTC")
    assert cache.update("BTC/USD", lo, hi, now) == 47
    path = cache.path("BTC/USD")
    path.write_bytes(path.read_bytes()[:100])  # truncated on disk
    assert cache.update("BTC/USD", lo, hi, now) == 47  # fetched again, whole
    assert len(cache.read("BTC/USD", lo, hi, now)) == 47
    assert f"the cached bars in {path} are damaged" in caplog.text


def test_the_leftovers_of_a_killed_fetch_are_removed_by_the_next(tmp_path, config_dir, capsys):
    state = yaml.safe_load((config_dir / "cappuccino.yaml").read_text())["paths"]["state_dir"]
    assert cli.main(["data", "fetch", "--config-dir", str(config_dir), "--symbols", "BTC/USD",
                     "--start", "2023-12-01", "--end", "2023-12-03"]) == 0
    cache_dir = next(p for p in (tmp_path / "state").rglob("*.npz")).parent
    leftover = cache_dir / "tmpab12cd.tmp"
    leftover.write_bytes(b"half a chunk")
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    fresh = cache_dir / "tmpwriting.tmp"  # another fetch writing right now: left alone
    fresh.write_bytes(b"being written")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a fetch that was killed a moment ago: its file goes at once
    killed = cache_dir / f"{gone.pid}-abcd.tmp"
    killed.write_bytes(b"half a chunk")
    writing = cache_dir / f"{os.getpid()}-efgh.tmp"  # this process, writing: left alone
    writing.write_bytes(b"being written")
    assert cli.main(["data", "fetch", "--config-dir", str(config_dir), "--symbols", "BTC/USD",
                     "--start", "2023-12-01", "--end", "2023-12-03"]) == 0
    assert not leftover.exists() and fresh.exists()
    assert not killed.exists() and writing.exists()
    assert str(tmp_path / "state") in state


LONG_COMMANDS = [["data", "fetch", "--symbols", "BTC/USD", *RANGE],
                 ["backtest", "--ensemble", "current"], ["paper", "--replay"],
                 ["report"], ["deploy", "--dry-run"]]


@pytest.fixture(scope="module")
def trading_config(tmp_path_factory, shared_data):
    """A study and a published ensemble: what the long commands need to get as far as bars
    (they are stopped before they write anything, so one serves them all)."""
    from test_trading import setup_trader_env
    return setup_trader_env(tmp_path_factory.mktemp("env"), shared_data)[0].config_dir


@pytest.mark.parametrize("command", LONG_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_long_command_stopped_by_a_signal_exits_130_or_143_and_leaves_nothing(
        command, sig, code, tmp_path, config_dir, capsys, monkeypatch, request):
    """Every long command reads bars; the signal arrives while they are being read: the
    command stops cleanly (one line), exits 130 (Ctrl-C) or 143 (SIGTERM), and leaves no
    temporary file and an unchanged configuration."""
    from cappuccino_core.data.cache import BarCache
    real = BarCache.read

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), sig)  # delivered here, in the main thread, mid-read
        time.sleep(5)
        return real(self, *args, **kwargs)
    if command[0] != "data":
        config_dir = request.getfixturevalue("trading_config")
    before = (Path(config_dir) / "cappuccino.yaml").read_text()
    monkeypatch.setattr(BarCache, "read", interrupted)
    started = time.monotonic()
    assert cli.main([*command, "--config-dir", str(config_dir)]) == code
    assert time.monotonic() - started < 5  # at once, not after the sleep
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("interrupted" if code == 130 else "terminated"), err
    assert (Path(config_dir) / "cappuccino.yaml").read_text() == before
    assert not list(Path(config_dir).parent.rglob("*.tmp")) and not list(tmp_path.rglob("*.tmp"))
