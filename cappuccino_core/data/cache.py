"""A bar cache under the state dir that asks its source only for what it does not hold yet.

One file per source, symbol and timeframe: `<dir>/<source>/<BASE>-<QUOTE>_<tf>.npz` with the bar
open times (ns), OHLCV and the list of time ranges already asked of the source (`covered`: a
range with no bars, such as a maintenance window, is covered and never asked again). Only closed
bars are stored. Each fetched chunk is written atomically before the next is asked for, so a
crash or Ctrl-C loses at most one chunk. A cache file that cannot be read (damaged on disk) is
named in the log, removed and fetched again; the temporary files of a fetch that was killed
are removed by the next one.

A live feed (one with no known extent) may still add a bar after it was first asked for: Alpaca
emits no bar for an interval without trades, and a late print can fill it in. Every fetch from
a live feed therefore asks again for the newest `refetch_bars` closed bars.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd

from ..common.intervals import merge, uncovered
from .bars import COLUMNS, closed_end, empty_frame, utc_index

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class BarSource(Protocol):
    name: str

    def fetch(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame: ...

    def extent(self, symbol: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """Where the source's data lies, when it knows (files); None for a live feed."""


class BarCache:
    def __init__(self, directory: str | Path, source: BarSource, timeframe: str, bar_seconds: int,
                 closed_bar_delay_s: float, chunk_bars: int = 2000, refetch_bars: int = 3):
        self.dir = Path(directory) / source.name
        self.source = source
        self.timeframe = timeframe
        self.bar_seconds = bar_seconds
        self.delay_s = closed_bar_delay_s
        self.chunk = pd.Timedelta(seconds=bar_seconds * chunk_bars)
        self.refetch = pd.Timedelta(seconds=bar_seconds * refetch_bars)

    def path(self, symbol: str) -> Path:
        return self.dir / f"{symbol.replace('/', '-')}_{self.timeframe}.npz"

    def _read(self, symbol: str) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
        p = self.path(symbol)
        if not p.exists():
            return empty_frame(), []
        try:
            with np.load(p, allow_pickle=False) as z:
                df = pd.DataFrame(z["ohlcv"], columns=list(COLUMNS),
                                  index=utc_index(z["t"]))
                covered = [tuple(map(int, r)) for r in z["covered"]]
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            log.warning("%s: the cached bars in %s are damaged (%s: %s): removed, fetched again",
                        symbol, p, type(e).__name__, e)
            p.unlink(missing_ok=True)
            return empty_frame(), []
        return df, covered

    def clear_leftovers(self, older_than_s: float = 600.0) -> list[Path]:
        """Remove the temporary files of writes that never finished (a fetch killed before
        its rename): those of a process that is gone, and any older than `older_than_s` (a
        write takes milliseconds)."""
        gone = []
        for tmp in self.dir.glob("*.tmp") if self.dir.is_dir() else []:
            writer = tmp.name.partition("-")[0]
            try:
                dead = writer.isdigit() and not _alive(int(writer))
                if dead or time.time() - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    gone.append(tmp)
            except FileNotFoundError:
                pass  # another process cleared it
        if gone:
            log.info("removed %d leftover temporary file(s) of an interrupted fetch in %s",
                     len(gone), self.dir)
        return gone

    def _write(self, symbol: str, df: pd.DataFrame, covered: list[tuple[int, int]]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # named after this process: a leftover whose writer is gone is known as one
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f"{os.getpid()}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, t=df.index.asi8, ohlcv=df[list(COLUMNS)].to_numpy(),
                                    covered=np.array(covered, dtype="int64").reshape(-1, 2))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path(symbol))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def missing(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp,
                now: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """The ranges of [start, end) that must still be asked of the source."""
        newest = closed_end(now, self.bar_seconds, self.delay_s)
        end = min(end, newest)
        extent = self.source.extent(symbol)
        if extent is not None:
            start, end = max(start, extent[0]), min(end, extent[1])
        if end <= start:
            return []
        _, covered = self._read(symbol)
        wanted = uncovered((start.value, end.value), covered)
        if extent is None and end > newest - self.refetch:  # a live feed's newest bars
            wanted = merge(wanted + [(max(start, end - self.refetch).value, end.value)])
        return [(pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC")) for lo, hi in wanted]

    def chunks(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp,
               now: pd.Timestamp) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
        """The missing ranges cut into source requests of at most `chunk_bars` bars."""
        out = []
        for lo, hi in self.missing(symbol, start, end, now):
            while lo < hi:
                out.append((lo, min(hi, lo + self.chunk)))
                lo = out[-1][1]
        return out

    def fill_chunk(self, symbol: str, lo: pd.Timestamp, hi: pd.Timestamp) -> int:
        """Fetch [lo, hi) from the source, store it, and return the number of new bars."""
        fresh = self.source.fetch(symbol, lo, hi)
        df, covered = self._read(symbol)
        before = len(df)
        df = pd.concat([df, fresh]) if len(df) else fresh
        df = df[~df.index.duplicated(keep="last")].sort_index()
        grown = merge(covered + [(lo.value, hi.value)]) if hi > lo else covered
        if len(df) != before or grown != covered:
            self._write(symbol, df, grown)
        return len(df) - before

    def update(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp, now: pd.Timestamp,
               on_chunk: Callable[[int], None] | None = None) -> int:
        """Make the cache hold every closed bar of [start, end); returns the bars added."""
        added = 0
        for lo, hi in self.chunks(symbol, start, end, now):
            n = self.fill_chunk(symbol, lo, hi)
            added += n
            if on_chunk:
                on_chunk(n)
        return added

    def read(self, symbol: str, start: pd.Timestamp, end: pd.Timestamp,
             now: pd.Timestamp) -> pd.DataFrame:
        """Cached closed bars with open time in [start, end)."""
        df, _ = self._read(symbol)
        end = min(end, closed_end(now, self.bar_seconds, self.delay_s))
        return df[(df.index >= start) & (df.index < end)]
