"""The window of bars a backtest, a replay, the report and the deployer cover: one definition.

Torch-free, so that parsing `--from/--to` costs a command nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..common.errors import USAGE, CappuccinoError
from ..data.bars import align_to_cadence


@dataclass(frozen=True)
class Window:
    """The bars a backtest, a replay, the report and the deployer cover; one definition for all.

    The first decision is at the first bar whose open time is >= `--from` (and late enough for
    every member's features, and a decision bar of the cadence `data.decision_bars`); each
    decision fills at the next bar's open; the last bar lived through is the last one that
    opens before `--to` (exclusive). So decisions are at bar indices lo, lo+k, ... up to
    hi-1-k and the result is the equity at the close of the last decision's last bar. Without `--from`
    the window is the study's held-out window (its recorded `train_end` on)."""
    lo: int
    hi: int
    first: pd.Timestamp   # open time of the first decision's bar
    last: pd.Timestamp    # open time of the last bar lived through
    what: str             # where the window came from, for the reader
    decision_bars: int = 1  # the cadence: a decision every this many bars, from lo

    @property
    def decisions(self) -> int:
        return (self.hi - 1 - self.lo) // self.decision_bars

    def __str__(self) -> str:
        return (f"{self.first:%Y-%m-%d %H:%M} .. {self.last:%Y-%m-%d %H:%M} UTC, "
                f"{self.decisions} decisions ({self.what})")


class WindowError(CappuccinoError, ValueError):
    """A window with no bar to decide on, or dates that do not parse."""
    exit_code = USAGE
    label = "window error"
    whole_message = True


def parse_time(value, what: str) -> pd.Timestamp | None:
    """A UTC timestamp from `--from`/`--to` text; WindowError naming the option otherwise."""
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise WindowError(f"{what}: expected a date like 2024-02-18 or 2024-02-18T03:00, "
                          f"got {value!r}") from e
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def resolve_window(bars, start=None, end=None, first_usable: int = 0,
                   held_out_from: pd.Timestamp | str | None = None,
                   study: str | None = None, decision_bars: int = 1) -> Window:
    """The window for `--from start --to end` over `bars` (see `Window`); with a cadence of
    `decision_bars`, the first decision is at the first decision bar from the start."""
    start_ts, end_ts = parse_time(start, "--from"), parse_time(end, "--to")
    if start_ts is not None:
        what = "--from/--to" if end_ts is not None else "--from"
    elif held_out_from is not None:
        start_ts = parse_time(held_out_from, "held-out window")
        what = f"held-out window of study {study}" if study else "held-out window"
    else:
        start_ts, what = bars.index[0], "all the data"
    lo = max(int(bars.index.searchsorted(start_ts)), first_usable)
    lo = align_to_cadence(bars.index, lo, decision_bars)
    hi = len(bars) if end_ts is None else int(bars.index.searchsorted(end_ts))
    if hi - lo < decision_bars + 1:
        raise WindowError(f"no bar to decide on in {what} {start_ts:%Y-%m-%d %H:%M} .. "
                          f"{'' if end_ts is None else f'{end_ts:%Y-%m-%d %H:%M}'} (data: "
                          f"{bars.index[0]:%Y-%m-%d %H:%M} .. {bars.index[-1]:%Y-%m-%d %H:%M}; "
                          f"first usable bar {bars.index[min(first_usable, len(bars) - 1)]})")
    return Window(lo, hi, bars.index[lo], bars.index[hi - 1], what, decision_bars)


def held_out_start(engine, study: str) -> pd.Timestamp | None:
    """The study's recorded start of its held-out window, or None."""
    from ..storage.optuna_db import STUDY_TRAIN_END, study_attr
    train_end = study_attr(engine, study, STUDY_TRAIN_END) if study else None
    return None if train_end is None else pd.Timestamp(train_end)


def held_out_window(engine, study: str, bars, first_usable: int = 0,
                    decision_bars: int = 1) -> Window:
    """The study's held-out window: from its recorded `train_end` (fixed when its first worker
    started) to the end of `bars`. WindowError when the study has none."""
    start = held_out_start(engine, study)
    if start is None:
        raise WindowError(f"study {study!r} has no recorded held-out window (train_end): "
                          "no worker has started on it yet")
    return resolve_window(bars, None, None, first_usable, start, study, decision_bars)
