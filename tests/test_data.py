"""Bars: validation, alignment and gaps, the closed-bar rule, the cache, the CSV source."""

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from cappuccino_core import cli
from cappuccino_core.common.config import load_config
from cappuccino_core.data import DataError, align, load_bars, only_closed
from cappuccino_core.data.cache import BarCache
from cappuccino_core.common.intervals import uncovered
from cappuccino_core.data.csv_source import CsvSource

from conftest import write_config

H = 3600
REAL = ["BTC/USD", "ETH/USD", "SOL/USD"]


def write_csv(directory, base, rows):
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["date,open,high,low,close,volume,ticker"]
    lines += [f"{d},{o},{h},{l},{c},{v},{base}USDT" for d, o, h, l, c, v in rows]
    (directory / f"{base}USDT_1h.csv").write_text("\n".join(lines) + "\n")


def good_rows(n, start="2023-01-01 00:00:00", price=100.0):
    t = pd.date_range(start, periods=n, freq="h")
    return [(ts.strftime("%Y-%m-%d %H:%M:%S"), price, price * 1.01, price * 0.99, price, 5.0)
            for ts in t]


@pytest.mark.parametrize("row, what", [
    (("2023-01-01 02:00:00", 100, 101, 99, "nan", 5), "NaN"),
    (("2023-01-01 02:00:00", 100, 101, 0, 100, 5), "non-positive price"),
    (("2023-01-01 02:00:00", 100, 99, 98, 100, 5), "OHLC violation"),
    (("2023-01-01 02:00:00", 100, 101, 100.5, 100, 5), "OHLC violation"),
    (("2023-01-01 02:30:00", 100, 101, 99, 100, 5), "bar grid"),
    (("2023-01-01 01:00:00", 100, 101, 99, 100, 5), "duplicate"),
])
def test_bad_rows_are_refused_naming_symbol_and_time(tmp_path, row, what):
    rows = good_rows(2) + [row] + good_rows(3, start="2023-01-01 03:00:00")
    write_csv(tmp_path, "BTC", rows)
    src = CsvSource(tmp_path, "1h", H)
    with pytest.raises(DataError, match=rf"^BTC/USD 2023-01-01 0[12]:[03]0:00\+00:00: .*{what}"):
        src.fetch("BTC/USD", pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2024-01-01", tz="UTC"))


def test_missing_file_is_named(tmp_path):
    write_csv(tmp_path, "BTC", good_rows(3))
    with pytest.raises(DataError, match="XRP/USD: no file XRP"):
        CsvSource(tmp_path, "1h", H).file_for("XRP/USD")


def test_real_data_gaps_are_filled_and_flagged(shared_data):
    src = CsvSource(shared_data, "1h", H)
    lo, hi = pd.Timestamp("2021-04-19", tz="UTC"), pd.Timestamp("2021-04-21", tz="UTC")
    frames = {s: src.fetch(s, lo, hi) for s in REAL}
    bars = align(frames, REAL, H)
    assert len(bars) == 48 and (np.diff(bars.index.asi8) == H * 10**9).all()
    gap = bars.index.get_indexer(pd.to_datetime(["2021-04-20 02:00", "2021-04-20 03:00"], utc=True))
    assert bars.filled[gap].all() and bars.filled.sum() == 2 * len(REAL)  # exchange-wide, 2 h
    before = gap[0] - 1
    for a in range(len(REAL)):
        prev_close = bars.close[before, a]
        assert (bars.ohlcv[gap, a, :4] == prev_close).all()  # flat at the previous close
        assert (bars.ohlcv[gap, a, 4] == 0).all()  # zero volume
    assert bars.symbols == tuple(REAL)


def test_one_symbol_gap_is_filled_only_for_it(tmp_path):
    write_csv(tmp_path, "AAA", good_rows(10, price=2.0))
    rows = good_rows(10, price=50.0)
    del rows[4]
    write_csv(tmp_path, "BBB", rows)
    src = CsvSource(tmp_path, "1h", H)
    span = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2023-02-01", tz="UTC")
    bars = align({s: src.fetch(s, *span) for s in ["AAA/USD", "BBB/USD"]}, ["AAA/USD", "BBB/USD"], H)
    assert len(bars) == 9  # the last row of each file is dropped as unfinished
    assert bars.filled[:, 0].sum() == 0 and list(np.flatnonzero(bars.filled[:, 1])) == [4]


def test_trailing_partial_bar_in_a_file_is_dropped(shared_data):
    src = CsvSource(shared_data, "1h", H)
    span = pd.Timestamp("2023-12-30", tz="UTC"), pd.Timestamp("2024-01-01", tz="UTC")
    eth = src.fetch("ETH/USD", *span)
    raw_last = pd.read_csv(shared_data / "ETHUSDT_1h.csv.gz").iloc[-1]
    assert raw_last["date"] == "2023-12-30 20:00:00"  # the partial candle the README warns of
    assert eth.index[-1] == pd.Timestamp("2023-12-30 19:00", tz="UTC")


def test_closed_bar_rule():
    idx = pd.date_range("2024-01-01 10:00", periods=4, freq="h", tz="UTC")
    df = pd.DataFrame({"close": [1.0, 2, 3, 4]}, index=idx)
    # 13:00 bar ends at 14:00; with a 10 s delay it is usable from 14:00:10.
    assert only_closed(df, pd.Timestamp("2024-01-01 14:00:09", tz="UTC"), H, 10).index[-1].hour == 12
    assert only_closed(df, pd.Timestamp("2024-01-01 14:00:10", tz="UTC"), H, 10).index[-1].hour == 13
    assert len(only_closed(df, pd.Timestamp("2024-01-01 10:59:59", tz="UTC"), H, 0)) == 0


def test_load_bars_never_returns_an_open_bar(tmp_path):
    write_csv(tmp_path / "csv", "AAA", good_rows(30))
    cfg_dir = write_config(tmp_path / "etc", {"paths": {"state_dir": str(tmp_path / "state")},
                                              "data": {"csv_path": str(tmp_path / "csv"),
                                                       "symbols": ["AAA/USD"]}})
    cfg = load_config(cfg_dir)
    now = pd.Timestamp("2023-01-01 10:30", tz="UTC")  # the 10:00 bar is still forming
    bars = load_bars(cfg, start="2023-01-01", now=now)
    assert bars.index[-1] == pd.Timestamp("2023-01-01 09:00", tz="UTC")
    later = load_bars(cfg, start="2023-01-01", now=pd.Timestamp("2023-01-02 00:00:10", tz="UTC"))
    assert later.index[-1] == pd.Timestamp("2023-01-01 23:00", tz="UTC")
    assert (later.ohlcv[: len(bars)] == bars.ohlcv).all()


class CountingSource:
    """A CSV source that records what the cache asks of it."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def fetch(self, symbol, start, end):
        self.calls.append((symbol, start, end))
        return self.inner.fetch(symbol, start, end)

    def extent(self, symbol):
        return self.inner.extent(symbol)


def test_cache_asks_only_for_missing_ranges(tmp_path, shared_data):
    src = CountingSource(CsvSource(shared_data, "1h", H))
    cache = BarCache(tmp_path, src, "1h", H, 10, chunk_bars=500)
    now = pd.Timestamp("2025-01-01", tz="UTC")
    t = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
    cache.update("BTC/USD", t("2022-01-01"), t("2022-03-01"), now)
    first_calls = len(src.calls)
    assert first_calls == 3  # 1416 bars in chunks of 500
    cache.update("BTC/USD", t("2022-01-15"), t("2022-02-15"), now)
    assert len(src.calls) == first_calls  # all held: nothing asked
    cache.update("BTC/USD", t("2021-12-01"), t("2022-03-10"), now)
    asked = [(s.strftime("%m-%d"), e.strftime("%m-%d")) for _, s, e in src.calls[first_calls:]]
    # only both ends, in chunks of at most 500 bars
    assert asked == [("12-01", "12-21"), ("12-21", "01-01"), ("03-01", "03-10")]
    df = cache.read("BTC/USD", t("2021-12-01"), t("2022-03-10"), now)
    direct = src.inner.fetch("BTC/USD", t("2021-12-01"), t("2022-03-10"))
    pd.testing.assert_frame_equal(df, direct, check_freq=False)


def test_cache_survives_restart_and_stores_only_closed_bars(tmp_path):
    write_csv(tmp_path / "csv", "AAA", good_rows(48))
    src = CsvSource(tmp_path / "csv", "1h", H)
    t = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
    cache = BarCache(tmp_path / "cache", src, "1h", H, 10)
    cache.update("AAA/USD", t("2023-01-01"), t("2023-01-03"), now=t("2023-01-01 12:00:05"))
    assert len(cache.read("AAA/USD", t("2023-01-01"), t("2023-01-03"), t("2023-01-03"))) == 11
    reopened = BarCache(tmp_path / "cache", src, "1h", H, 10)
    missing = reopened.missing("AAA/USD", t("2023-01-01"), t("2023-01-03"),
                               now=t("2023-01-03 00:00:10"))
    # from the first bar not closed at the first fetch to the end of the file's last full bar
    assert missing == [(t("2023-01-01 11:00"), t("2023-01-02 23:00"))]


def test_range_subtraction():
    assert uncovered((0, 10), []) == [(0, 10)]
    assert uncovered((0, 10), [(2, 4), (6, 8)]) == [(0, 2), (4, 6), (8, 10)]
    assert uncovered((0, 10), [(-5, 20)]) == []
    assert uncovered((3, 7), [(0, 4), (6, 9)]) == [(4, 6)]


def test_bundled_sample_loads(tmp_path, config_dir):
    bars = load_bars(load_config(config_dir), start="2023-01-01")
    assert bars.symbols == ("BTC/USD", "ETH/USD", "LTC/USD", "BCH/USD", "LINK/USD", "UNI/USD",
                            "AAVE/USD")
    assert len(bars) > 8000 and np.isfinite(bars.ohlcv).all()
    assert bars.filled.any()  # the 2023-03-24 13:00 maintenance hour


def test_data_fetch_command_from_csv(tmp_path, config_dir, shared_data, capsys):
    gz = tmp_path / "copy"
    gz.mkdir()
    shutil.copy(shared_data / "SOLUSDT_1h.csv.gz", gz)
    args = ["data", "fetch", "--config-dir", str(config_dir), "--source", "csv", "--path", str(gz),
            "--symbols", "SOL/USD", "--start", "2023-06-01", "--end", "2023-07-01"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "SOL/USD" in out and " 720 " in out  # 30 days of hourly bars, all new
    assert cli.main(args) == 0
    assert "SOL/USD            0     720" in capsys.readouterr().out  # second run: all cached


def test_data_fetch_reports_bad_data(tmp_path, config_dir, capsys):
    rows = good_rows(5)
    rows[2] = (rows[2][0], 100, 101, 99, -3, 5)
    write_csv(tmp_path / "bad", "BAD", rows)
    rc = cli.main(["data", "fetch", "--config-dir", str(config_dir), "--source", "csv",
                   "--path", str(tmp_path / "bad"), "--symbols", "BAD/USD", "--start", "2023-01-01"])
    assert rc == 1
    assert "BAD/USD 2023-01-01 02:00:00+00:00: non-positive price" in capsys.readouterr().err


def test_gzip_and_plain_csv_read_the_same(tmp_path):
    write_csv(tmp_path / "plain", "AAA", good_rows(20))
    (tmp_path / "gz").mkdir()
    with open(tmp_path / "plain" / "AAAUSDT_1h.csv", "rb") as f, \
            gzip.open(tmp_path / "gz" / "AAAUSDT_1h.csv.gz", "wb") as g:
        g.write(f.read())
    span = pd.Timestamp("2023-01-01", tz="UTC"), pd.Timestamp("2023-02-01", tz="UTC")
    a = CsvSource(tmp_path / "plain", "1h", H).fetch("AAA/USD", *span)
    b = CsvSource(tmp_path / "gz", "1h", H).fetch("AAA/USD", *span)
    pd.testing.assert_frame_equal(a, b)
