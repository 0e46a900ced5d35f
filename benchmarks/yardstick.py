"""A yardstick that can tell levers apart (issue 26, point 9): the measures search_quality.py
reports per set and pooled, from daily returns rather than hourly ones (an hourly Sharpe over
60 days has a standard error of about 2.5; margins are a tenth of that).

- `daily_returns`, `daily_metrics`: Sharpe, Sortino (annualised with 365 days) and max
  drawdown from the equity at each day's close.
- `block_bootstrap_interval`: a 90% interval of the mean of a daily series (e.g. the excess
  over holding), resampled in blocks so that autocorrelation is kept.
- `pbo_daily_blocks`: the probability of backtest overfitting by CSCV over at least 16 blocks
  of the trials' daily out-of-sample returns (PBO from 4-6 CV splits moves in sixths).
- `information_ratio`: of the daily excess over a reference.
"""

from __future__ import annotations

import math

import numpy as np

from cappuccino_core.operations.deploy import probability_of_backtest_overfitting
from cappuccino_core.rl.backtest import max_drawdown, sharpe, sortino

BARS_PER_DAY = 24
DAYS_PER_YEAR = 365
PBO_BLOCKS = 16


def daily_returns(equity: np.ndarray, bars_per_day: int = BARS_PER_DAY) -> np.ndarray:
    """Simple returns from one day's close to the next (the equity every `bars_per_day`)."""
    d = np.asarray(equity, dtype=float)[::bars_per_day]
    return d[1:] / d[:-1] - 1


def daily_metrics(equity: np.ndarray) -> dict:
    r = daily_returns(equity)
    return {"sharpe": sharpe(r, DAYS_PER_YEAR), "sortino": sortino(r, DAYS_PER_YEAR),
            "max_drawdown": max_drawdown(np.asarray(equity)[::BARS_PER_DAY]),
            "log_return": float(math.log(equity[-1] / equity[0]))}


def information_ratio(returns: np.ndarray, reference: np.ndarray) -> float:
    """Annualised mean over standard deviation of the daily excess over `reference`."""
    return sharpe(np.asarray(returns) - np.asarray(reference), DAYS_PER_YEAR)


def block_bootstrap_interval(series: np.ndarray, level: float = 0.9, block: int = 5,
                             n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """A `level` interval of the mean of `series` by the moving-block bootstrap."""
    x = np.asarray(series, dtype=float)
    if len(x) < 2 * block:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(x) - block + 1, size=(n, math.ceil(len(x) / block)))
    samples = x[(starts[:, :, None] + np.arange(block)).reshape(n, -1)[:, :len(x)]]
    means = samples.mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def pbo_daily_blocks(daily: np.ndarray, blocks: int = PBO_BLOCKS) -> float:
    """PBO by CSCV: `daily[day, trial]` out-of-sample returns cut into `blocks` blocks of
    days; each trial's result on a block is its mean return there. NaN with fewer than two
    trials or fewer days than blocks."""
    days, trials = daily.shape
    if trials < 2 or days < blocks:
        return float("nan")
    perf = np.stack([part.mean(axis=0) for part in np.array_split(daily, blocks)])
    return probability_of_backtest_overfitting(perf)
