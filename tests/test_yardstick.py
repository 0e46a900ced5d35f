"""The search-quality yardstick's measures (benchmarks/yardstick.py) on planted series: each
can fail."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import yardstick  # noqa: E402


def test_daily_metrics_read_the_close_of_each_day():
    hourly = np.repeat(100 * 1.01 ** np.arange(31), 24)[:-23]  # +1% a day, flat within days
    m = yardstick.daily_metrics(hourly)
    assert m["log_return"] == pytest.approx(30 * np.log(1.01))
    assert m["max_drawdown"] == 0.0 and m["sharpe"] == 0.0  # no variance: no Sharpe claimed
    wavy = hourly * np.where(np.arange(len(hourly)) // 24 % 2, 0.98, 1.0)
    assert yardstick.daily_metrics(wavy)["max_drawdown"] == pytest.approx(0.02, abs=0.011)


def test_the_bootstrap_interval_finds_a_real_edge_and_not_noise():
    rng = np.random.default_rng(0)
    lo, hi = yardstick.block_bootstrap_interval(rng.normal(0.004, 0.01, 180))
    assert 0 < lo < 0.004 < hi
    lo, hi = yardstick.block_bootstrap_interval(rng.normal(0.0, 0.01, 180))
    assert lo < 0 < hi
    assert np.isnan(yardstick.block_bootstrap_interval(np.ones(5))[0])  # too short to say


def test_pbo_over_daily_blocks_separates_skill_from_luck():
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, (120, 8))
    skilled = noise.copy()
    skilled[:, 0] += 0.01  # one trial better in every block, out of sample too
    assert yardstick.pbo_daily_blocks(skilled) == pytest.approx(0.0)
    assert 0.15 < yardstick.pbo_daily_blocks(noise) < 0.85  # luck ranks anywhere
    assert np.isnan(yardstick.pbo_daily_blocks(noise[:10]))  # fewer days than blocks


def test_information_ratio_sign():
    rng = np.random.default_rng(2)
    ref = rng.normal(0, 0.02, 60)
    assert yardstick.information_ratio(ref + 0.002 + rng.normal(0, 0.001, 60), ref) > 0
    assert yardstick.information_ratio(ref - 0.002 + rng.normal(0, 0.001, 60), ref) < 0
