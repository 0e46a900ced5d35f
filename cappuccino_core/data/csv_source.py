"""Bars from local CSV files in the layout of Binance klines dumps.

One file per asset, named `<BASE><QUOTE>_<timeframe>.csv[.gz]` (e.g. `BTCUSDT_1h.csv.gz`), with
columns `date,open,high,low,close,volume[,ticker]`, `date` the candle's open time in UTC. The
symbol `BTC/USD` is served from the first file for base `BTC` with quote USD, USDT or USDC.

A file is a snapshot of a feed: its last row may have been written while that candle was still
open (see ../shared/data's README: ETH's last candle holds 1% of a normal volume). Rows carry no
write time, so the last row of every file is treated as unfinished and dropped.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .bars import COLUMNS, DataError, empty_frame, utc_index, validate

QUOTES = ("USD", "USDT", "USDC")


class CsvSource:
    def __init__(self, path: str | Path, timeframe: str, bar_seconds: int):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"CSV data directory {self.path} does not exist")
        self.timeframe = timeframe
        self.bar_seconds = bar_seconds
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:10]
        self.name = f"csv-{digest}"

    def file_for(self, symbol: str) -> Path:
        base = symbol.split("/")[0]
        for quote in QUOTES:
            for ext in (".csv.gz", ".csv"):
                f = self.path / f"{base}{quote}_{self.timeframe}{ext}"
                if f.exists():
                    return f
        raise DataError(f"{symbol}: no file {base}{{USD,USDT,USDC}}_{self.timeframe}.csv[.gz] "
                        f"in {self.path}")

    def _load(self, symbol: str) -> pd.DataFrame:
        path = self.file_for(symbol)
        stat = path.stat()  # a file that grew or changed is read again, not served from memory
        return _read_file(path, stat.st_size, stat.st_mtime_ns, symbol, self.bar_seconds)

    def fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Closed bars with open time in [start, end)."""
        df = self._load(symbol)
        return df[(df.index >= start) & (df.index < end)]

    def extent(self, symbol: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """[first bar, end of last bar) in the file: nothing outside it is worth asking for.
        Asking past the end later may find appended rows."""
        df = self._load(symbol)
        if df.empty:
            return None
        return df.index[0], df.index[-1] + pd.Timedelta(seconds=self.bar_seconds)


@lru_cache(maxsize=64)
def _read_file(path: Path, size: int, mtime_ns: int, symbol: str,
               bar_seconds: int) -> pd.DataFrame:
    """The closed bars of one file (cached per path, size and modification time)."""
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{symbol}: cannot read {path}: {e}") from e
    header = list(raw.columns)
    raw.columns = [str(c).strip().lower() for c in raw.columns]  # Date, OPEN, ... are fine
    missing = {"date", *COLUMNS} - set(raw.columns)
    if missing:
        raise DataError(f"{symbol}: {path} lacks columns {sorted(missing)} (case does not "
                        f"matter); its header is {','.join(map(str, header))}")
    # The last row may be an unfinished candle, or a line still being written: it goes before
    # anything is checked, so a half-written line never rejects the whole file.
    raw = raw.iloc[:-1]
    if raw.empty:
        return empty_frame()
    try:
        index = utc_index(raw["date"])
    except (ValueError, TypeError) as e:
        bad = next((v for v in raw["date"] if _bad_date(v)), "?")
        raise DataError(f"{symbol}: {path}: a date that does not parse: {bad!r}") from e
    df = pd.DataFrame({c: pd.to_numeric(raw[c], errors="coerce").to_numpy("float64")
                       for c in COLUMNS}, index=index)
    validate(symbol, df, bar_seconds)
    return df


def _bad_date(value) -> bool:
    try:
        pd.Timestamp(value)
        return False
    except (ValueError, TypeError):
        return True
