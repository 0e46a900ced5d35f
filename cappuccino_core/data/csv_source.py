"""Bars from local CSV files in the layout of Binance klines dumps.

One file per asset, named `<BASE><QUOTE>_<timeframe>.csv[.gz]` (e.g. `BTCUSDT_1h.csv.gz`), with
columns `date,open,high,low,close,volume[,ticker]`, `date` the candle's open time in UTC. A
symbol is served from the file of its own quote: `BTC/USD` from USD, or a dollar stablecoin
(USDT, USDC), `ETH/BTC` only from `ETHBTC`: prices are never taken in another currency. Two
files that could serve one symbol (`.csv` and `.csv.gz`, USD and USDT) must hold the same
bars, or the symbol is refused: which one is right cannot be guessed.

A file is a snapshot of a feed: its last row may have been written while that candle was still
open (see ../shared/data's README: ETH's last candle holds 1% of a normal volume). Rows carry no
write time, so the last row of every file is treated as unfinished and dropped.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import lru_cache
from pathlib import Path

import pandas as pd

from .bars import COLUMNS, DataError, empty_frame, utc_index, validate

DOLLARS = ("USD", "USDT", "USDC")  # what a USD symbol may be quoted in


class CsvSource:
    def __init__(self, path: str | Path, timeframe: str, bar_seconds: int,
                 max_jump: float | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"CSV data directory {self.path} does not exist")
        self.timeframe = timeframe
        self.bar_seconds, self.max_jump = bar_seconds, max_jump
        digest = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:10]
        self.name = f"csv-{digest}"

    def files_for(self, symbol: str) -> list[Path]:
        """Every file that could serve `symbol`: its quote's (a USD symbol's: any dollar's)."""
        base, _, quote = symbol.partition("/")
        quotes = DOLLARS if quote == "USD" else (quote,)
        found = [self.path / f"{base}{q}_{self.timeframe}{ext}" for q in quotes
                 for ext in (".csv.gz", ".csv")]
        found = [f for f in found if f.exists()]
        if not found:
            names = "{" + ",".join(quotes) + "}" if len(quotes) > 1 else quotes[0]
            raise DataError(f"{symbol}: no file {base}{names}_{self.timeframe}.csv[.gz] in "
                            f"{self.path}")
        return found

    def file_for(self, symbol: str) -> Path:
        return self.files_for(symbol)[0]

    def _load(self, symbol: str) -> pd.DataFrame:
        frames = []
        for path in self.files_for(symbol):
            stat = path.stat()  # a file that grew or changed is read again, not from memory
            frames.append((path, _read_file(path, stat.st_size, stat.st_mtime_ns, symbol,
                                            self.bar_seconds, self.max_jump)))
        (first, df), *others = frames
        for path, other in others:
            if not df.equals(other):
                raise DataError(f"{symbol}: {first.name} and {path.name} in {self.path} hold "
                                "different bars: keep the one that is right, remove the other")
        if df.empty:
            raise DataError(f"{symbol}: {first} has no usable rows (a header and at most one "
                            "unfinished candle)")
        return df

    def fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Closed bars with open time in [start, end)."""
        df = self._load(symbol)
        return df[(df.index >= start) & (df.index < end)]

    def extent(self, symbol: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """[first bar, end of last bar) in the file: nothing outside it is worth asking for.
        Asking past the end later may find appended rows."""
        df = self._load(symbol)  # never empty: a file without rows is refused
        return df.index[0], df.index[-1] + pd.Timedelta(seconds=self.bar_seconds)


@lru_cache(maxsize=64)
def _read_file(path: Path, size: int, mtime_ns: int, symbol: str, bar_seconds: int,
               max_jump: float | None = None) -> pd.DataFrame:
    """The closed bars of one file (cached per path, size and modification time)."""
    try:
        raw = pd.read_csv(path)
    except (OSError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        what = "damaged or not gzip" if path.suffix == ".gz" else "unreadable"
        raise DataError(f"{symbol}: {path} is {what}: {type(e).__name__}: {e}") from e
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
    validate(symbol, df, bar_seconds, max_jump)
    return df


def _bad_date(value) -> bool:
    try:
        pd.Timestamp(value)
        return False
    except (ValueError, TypeError):
        return True
