"""The signal-ceiling benchmark's measures (benchmarks/signal_ceiling.py) on series whose
answer is known: a planted signal is found out of sample with an interval above 0, noise is
not; the cost-aware rules cost nothing when the forecast says nothing, and pay when it knows."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from signal_ceiling import (asset_rule, block_bootstrap, market_rule, rank_corr,  # noqa: E402
                            ridge, walk_forward)


def planted(n=6000, strength=0.3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4))
    y = strength * x[:, 0] + rng.standard_normal(n)
    return x, y


def oos_ic(x, y):
    pred = walk_forward(x, y, ridge, h=1, first=1000, refit=500)
    ok = np.isfinite(pred)
    p, t = pred[ok], y[ok]
    return rank_corr(p, t), block_bootstrap(lambda i: rank_corr(p[i], t[i]), len(p), 168)


def test_a_planted_signal_is_found_out_of_sample_and_noise_is_not():
    ic, (lo, hi) = oos_ic(*planted(strength=0.3))
    assert ic > 0.2 and lo > 0.15
    ic, (lo, hi) = oos_ic(*planted(strength=0.0))
    assert abs(ic) < 0.05 and lo < 0 < hi


def test_the_walk_forward_never_sees_its_own_block():
    """A label that is the future of the feature row (h bars ahead) must not leak: with the
    embargo, forecasts of a pure-noise series stay noise even at a long horizon."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.standard_normal(5000))
    h = 24
    y = np.full(5000, np.nan)
    y[:-h] = walk[h:] - walk[:-h]
    x = np.stack([walk, np.r_[0, np.diff(walk)]], axis=1)
    pred = walk_forward(x, y, ridge, h=h, first=1000, refit=250)
    ok = np.isfinite(pred) & np.isfinite(y)
    assert abs(rank_corr(pred[ok], y[ok])) < 0.1


def test_the_rules_cost_nothing_when_the_forecast_says_nothing_and_pay_when_it_knows():
    rng = np.random.default_rng(2)
    market = rng.normal(0, 0.01, 2000)
    silent = market_rule(np.zeros(2000), market, h=1, cost=0.003)
    assert np.allclose(silent.rule, silent.hold) and silent.turnover == 0
    knowing = market_rule(np.sign(market) * 0.05, market, h=1, cost=0.003)
    assert knowing.rule.sum() > knowing.hold.sum()
    fwd = rng.normal(0, 0.01, (2000, 6))
    basket = asset_rule(np.zeros((2000, 6)), fwd, h=1, cost=0.003)
    assert np.allclose(basket.rule, basket.hold) and basket.turnover == 0
    ahead = asset_rule(fwd * 10, fwd, h=1, cost=0.003)
    assert ahead.rule.sum() > ahead.hold.sum()
