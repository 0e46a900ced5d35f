"""Alpaca historical crypto bars: the real alpaca-py client against the local emulator."""

import pandas as pd
import pytest

from cappuccino_core import cli
from cappuccino_core.data import DataError
from cappuccino_core.data.alpaca_source import AlpacaSource
from cappuccino_core.data.csv_source import CsvSource

from alpaca_emulator import AlpacaEmulator, RunningEmulator

H = 3600
SPAN = pd.Timestamp("2022-03-01", tz="UTC"), pd.Timestamp("2022-03-11", tz="UTC")


@pytest.fixture
def emulator(shared_data):
    csv = CsvSource(shared_data, "1h", H)
    wide = pd.Timestamp("2022-01-01", tz="UTC"), pd.Timestamp("2022-06-01", tz="UTC")
    emu = AlpacaEmulator(bars={s: csv.fetch(s, *wide) for s in ["BTC/USD", "ETH/USD"]},
                         page_size_cap=100)  # small pages: 240 bars need 3 requests
    with RunningEmulator(emu) as running:
        yield running


def bar_requests(emu):
    return [q for m, p, q in emu.requests if p == "/v1beta3/crypto/us/bars"]


def test_pages_are_followed(emulator, shared_data):
    src = AlpacaSource(H, url_override=emulator.url, retry_wait_s=0.01)
    df = src.fetch("BTC/USD", *SPAN)
    expected = CsvSource(shared_data, "1h", H).fetch("BTC/USD", *SPAN)
    pd.testing.assert_frame_equal(df, expected, check_freq=False)
    reqs = bar_requests(emulator.emulator)
    assert len(reqs) == 3 and reqs[0]["symbols"] == "BTC/USD" and reqs[0]["timeframe"] == "1Hour"
    assert [q.get("page_token") for q in reqs] == [None, "100", "200"]


def test_rate_limit_and_server_errors_are_retried(emulator, shared_data):
    emulator.emulator.fail_next(429)
    emulator.emulator.fail_next(500, times=2)
    src = AlpacaSource(H, url_override=emulator.url, retry_wait_s=0.01)
    df = src.fetch("ETH/USD", *SPAN)
    assert len(df) == 240
    statuses = len(bar_requests(emulator.emulator))
    assert statuses == 3 + 3  # three faults, then three pages


def test_persistent_failure_is_a_clear_error(emulator):
    emulator.emulator.fail_next(500, times=50)
    src = AlpacaSource(H, url_override=emulator.url, retry_wait_s=0.001, max_retries=2)
    with pytest.raises(DataError, match="BTC/USD: Alpaca bars request failed"):
        src.fetch("BTC/USD", *SPAN)


def test_client_errors_are_not_retried(emulator):
    emulator.emulator.fail_next(403)
    src = AlpacaSource(H, url_override=emulator.url, retry_wait_s=0.001)
    with pytest.raises(DataError):
        src.fetch("BTC/USD", *SPAN)
    assert len(bar_requests(emulator.emulator)) == 1


def test_data_fetch_command_fills_cache_from_alpaca(emulator, tmp_path, capsys):
    from conftest import write_config
    config_dir = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")},
                                                 "broker": {"url_override": emulator.url}})
    emulator.emulator.fail_next(429)  # alpaca-py's own retry waits 3 s on a 429; keep it to one
    args = ["data", "fetch", "--config-dir", str(config_dir), "--source", "alpaca",
            "--symbols", "BTC/USD", "ETH/USD", "--start", "2022-03-01", "--end", "2022-03-11"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "BTC/USD          240     240" in out and "ETH/USD          240     240" in out
    n = len(bar_requests(emulator.emulator))
    assert cli.main(args) == 0  # all cached: the emulator is not asked again
    assert len(bar_requests(emulator.emulator)) == n
    assert "BTC/USD            0     240" in capsys.readouterr().out


def test_a_refused_key_is_one_line_from_the_command(emulator, tmp_path, capsys):
    """Alpaca answering 401 (a bad key) ends `data fetch` with one line naming it, exit 1."""
    from conftest import write_config
    etc = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")},
                                          "data": {"source": "alpaca",
                                                   "symbols": ["BTC/USD", "ETH/USD"]},
                                          "broker": {"url_override": emulator.url}})
    emulator.emulator.fail_next(401)
    code = cli.main(["data", "fetch", "--start", "2022-03-01", "--end", "2022-03-02",
                     "--config-dir", str(etc)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("data error: BTC/USD: Alpaca bars request failed")
