"""Bars: validation, the closed-bar rule, and alignment of several symbols on one UTC index.

A bar is stamped with its OPEN time (as Binance and Alpaca do) and covers [t, t + bar). It is
closed, and may drive a decision, once `t + bar + delay <= now`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..common.errors import CappuccinoError

log = logging.getLogger(__name__)

COLUMNS = ("open", "high", "low", "close", "volume")


class DataError(CappuccinoError, ValueError):
    """Market data that must not be used: the message names the symbol and the timestamp."""
    label = "data error"


def utc_index(values) -> pd.DatetimeIndex:
    """Bar open times as a UTC index in nanoseconds (pandas may infer coarser units otherwise,
    and the grid checks and the cache work on integer nanoseconds)."""
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True), name="t").as_unit("ns")


def empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64") for c in COLUMNS}, index=utc_index([]))


def closed_end(now: pd.Timestamp, bar_seconds: int, delay_s: float) -> pd.Timestamp:
    """The open time of the first bar that is NOT yet closed at `now`: bars before it are usable."""
    usable = pd.Timestamp(now).tz_convert("UTC") - pd.Timedelta(seconds=delay_s)
    return usable.floor(pd.Timedelta(seconds=bar_seconds))


def only_closed(df: pd.DataFrame, now: pd.Timestamp, bar_seconds: int,
                delay_s: float) -> pd.DataFrame:
    """The rows of `df` whose bar has ended, plus `delay_s`, by `now`."""
    return df[df.index < closed_end(now, bar_seconds, delay_s)]


def validate(symbol: str, df: pd.DataFrame, bar_seconds: int,
             max_jump: float | None = None) -> pd.DataFrame:
    """Check one symbol's bars; raise DataError naming symbol and timestamp on the first fault.
    With `max_jump`, a bar whose close jumps by more than that factor from the close before
    and comes back by as much at the next bar (a bad print, not a market) is refused too, as
    is a wick that far from the bar's own open and close."""
    if not df.index.is_monotonic_increasing:
        bad = df.index[1:][np.diff(df.index.asi8) < 0][0]
        raise DataError(f"{symbol} {bad}: bars out of order")
    dup = df.index.duplicated()
    if dup.any():
        raise DataError(f"{symbol} {df.index[dup][0]}: duplicate bar")
    off_grid = (df.index.asi8 // 10**9) % bar_seconds != 0
    if off_grid.any():
        raise DataError(f"{symbol} {df.index[off_grid][0]}: not on the {bar_seconds}s bar grid")
    values = df[list(COLUMNS)].to_numpy(dtype="float64")
    checks = [
        (~np.isfinite(values).all(axis=1), "NaN or infinite value"),
        ((values[:, :4] <= 0).any(axis=1), "non-positive price"),
        (values[:, 4] < 0, "negative volume"),
    ]
    o, h, l, c = (values[:, i] for i in range(4))
    tol = 1e-9 * np.abs(h)
    checks.append((
        (l > np.minimum(o, c) + tol) | (h < np.maximum(o, c) - tol) | (l > h + tol),
        "OHLC violation (low <= open, close <= high)"))
    if max_jump is not None and len(c) > 0:
        prev, nxt = np.r_[c[:1], c[:-1]], np.r_[c[1:], c[-1:]]
        up, back = c / prev, nxt / c
        checks.append((((up > max_jump) & (back < 1 / max_jump))
                       | ((up < 1 / max_jump) & (back > max_jump)),
                       f"a jump of more than {max_jump:g}x that returns at the next bar "
                       "(data.max_bar_jump)"))
        checks.append(((h > max_jump * np.maximum(o, c)) | (l < np.minimum(o, c) / max_jump),
                       f"a wick more than {max_jump:g}x away from the open and close "
                       "(data.max_bar_jump)"))
    for bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{symbol} {df.index[i]}: {what}: "
                            + ", ".join(f"{k}={values[i, j]!r}" for j, k in enumerate(COLUMNS)))
    return df


def is_decision_bar(bar_time: pd.Timestamp, bar_seconds: int, decision_bars: int) -> bool:
    """Whether the policy decides at the close of the bar opening at `bar_time`: bars whose
    open is a whole number of `decision_bars` bars since 1970-01-01 UTC (the same bars in
    training, backtests, the trader and replay, whoever starts when)."""
    return (pd.Timestamp(bar_time).value // (bar_seconds * 10**9)) % decision_bars == 0


def align_to_cadence(index: pd.DatetimeIndex, lo: int, decision_bars: int) -> int:
    """The first row at or after `lo` that is a decision bar (`index`: a regular grid of
    bars, as `align` makes it)."""
    if decision_bars == 1 or len(index) < 2:
        return lo
    bar_seconds = int((index[1] - index[0]).total_seconds())
    for i in range(lo, min(lo + decision_bars, len(index))):
        if is_decision_bar(index[i], bar_seconds, decision_bars):
            return i
    return lo


@dataclass(frozen=True)
class Bars:
    """Aligned bars of several symbols: `ohlcv[t, asset, field]`, `filled[t, asset]` marks bars
    that were missing at the source and forward-filled (flat price, zero volume)."""

    symbols: tuple[str, ...]
    index: pd.DatetimeIndex
    ohlcv: np.ndarray
    filled: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def field(self, name: str) -> np.ndarray:
        return self.ohlcv[:, :, COLUMNS.index(name)]

    @property
    def close(self) -> np.ndarray:
        return self.field("close")

    @property
    def open(self) -> np.ndarray:
        return self.field("open")

    def slice(self, start: int, stop: int) -> "Bars":
        return Bars(self.symbols, self.index[start:stop], self.ohlcv[start:stop],
                    self.filled[start:stop])

    def between(self, start: pd.Timestamp | None, end: pd.Timestamp | None) -> "Bars":
        """Bars with open time in [start, end)."""
        lo = 0 if start is None else int(self.index.searchsorted(pd.Timestamp(start)))
        hi = len(self) if end is None else int(self.index.searchsorted(pd.Timestamp(end)))
        return self.slice(lo, hi)


def align(frames: dict[str, pd.DataFrame], symbols: list[str], bar_seconds: int,
          max_gap_bars: int | None = None) -> Bars:
    """Put `symbols` (in that order) on one complete UTC grid, from the first bar they all
    have to the newest bar any of them has.

    Bars missing at the source (exchange-wide maintenance, one market's gap, or a quiet asset
    that printed nothing in the latest bars: Alpaca emits no bar without trades) are filled
    with the previous close as open/high/low/close and zero volume, flagged, and counted in
    the log: one quiet asset never holds back the others' newest bar. A run of more than
    `max_gap_bars` missing bars, trailing ones included, is refused (DataError naming the
    symbol and the gap): that is a dead feed, not a quiet hour."""
    for s in symbols:
        if frames[s].empty:
            raise DataError(f"{s}: no bars in the requested range")
    step = pd.Timedelta(seconds=bar_seconds)
    first = min(frames[s].index[0] for s in symbols)
    start = max(frames[s].index[0] for s in symbols)
    end = max(frames[s].index[-1] for s in symbols)
    if min(frames[s].index[-1] for s in symbols) < start:
        raise DataError(f"symbols {', '.join(symbols)} have no common time span")
    grid = pd.date_range(first, end, freq=step, tz="UTC", name="t").as_unit("ns")
    out = np.empty((len(grid), len(symbols), len(COLUMNS)))
    filled = np.zeros((len(grid), len(symbols)), dtype=bool)
    for a, s in enumerate(symbols):
        df = frames[s].reindex(grid)
        missing = df["close"].isna().to_numpy()
        close = df["close"].ffill()
        for f in ("open", "high", "low"):
            df[f] = df[f].fillna(close)
        df["close"] = close
        df["volume"] = df["volume"].fillna(0.0)
        out[:, a, :] = df[list(COLUMNS)].to_numpy()
        filled[:, a] = missing
    keep = grid >= start
    _check_gaps(symbols, grid[keep], filled[keep], max_gap_bars)
    return Bars(tuple(symbols), grid[keep], out[keep], filled[keep])


_SAID: set[tuple] = set()


def _check_gaps(symbols, grid: pd.DatetimeIndex, filled: np.ndarray,
                max_gap_bars: int | None) -> None:
    for a, symbol in enumerate(symbols):
        missing = filled[:, a]
        if not missing.any():
            continue
        # runs of consecutive missing bars: where they start and how long they are
        edges = np.diff(np.concatenate([[0], missing.astype(int), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        longest = int(np.argmax(ends - starts))
        length = int(ends[longest] - starts[longest])
        if max_gap_bars is not None and length > max_gap_bars:
            raise DataError(f"{symbol} {grid[starts[longest]]}: {length} bars missing in a row "
                            f"(to {grid[ends[longest] - 1]}), more than data.max_gap_bars "
                            f"({max_gap_bars})")
        said = (symbol, int(missing.sum()), str(grid[starts[longest]]))
        if said not in _SAID:  # once per process: a live trader reloads the same bars hourly
            _SAID.add(said)
            log.info("%s: %d missing bars filled flat at the previous close (%d gaps, the "
                     "longest %d bars from %s)", symbol, said[1], len(starts), length, said[2])
