"""Volatility-managed holding (the `hold_vol_managed` fallback) and the holding benchmark's
measures (benchmarks/holding_rules.py): each can fail."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cappuccino_core.ensemble.serving import Ensemble
from cappuccino_core.rl.backtest import (
    EXPOSURE_STEP,
    HOLD_BAND,
    TARGET_WINDOW,
    VOL_WINDOW,
    trading_settings,
    vol_managed_exposure,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import holding_rules  # noqa: E402


def returns(vols: list[float], bars_each: int, assets: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, v, (bars_each, assets)) for v in vols])


def test_exposure_falls_when_the_last_week_is_wilder_than_the_month():
    calm, wild = returns([0.01], TARGET_WINDOW), returns([0.03], VOL_WINDOW, seed=1)
    exposure = vol_managed_exposure(np.concatenate([calm, wild]))
    assert 0.2 <= exposure <= 0.6  # about a third: the target is the month's median
    assert exposure / EXPOSURE_STEP == pytest.approx(round(exposure / EXPOSURE_STEP))


def test_exposure_is_full_when_calm_or_unmeasurable():
    assert vol_managed_exposure(returns([0.03, 0.01], TARGET_WINDOW)) == 1.0  # calmer now
    assert vol_managed_exposure(returns([0.01], VOL_WINDOW - 1)) == 1.0  # too short to say
    flat = np.zeros((TARGET_WINDOW, 3))
    assert vol_managed_exposure(flat) == 1.0
    gappy = returns([0.01], TARGET_WINDOW)
    gappy[::5, 1] = np.nan  # a quiet asset's missing returns are skipped, not propagated
    assert 0 < vol_managed_exposure(gappy) <= 1.0


def test_the_served_fallback_holds_the_exposure_in_equal_weights_with_holdings_band():
    feats = np.zeros((TARGET_WINDOW + VOL_WINDOW, 3, 16))
    feats[:, :, 0] = np.concatenate([returns([0.01], TARGET_WINDOW), returns([0.04], VOL_WINDOW)])
    ens = Ensemble(1, "s", Path("."), [], np.zeros(0), fallback="hold_vol_managed")
    w = ens.target_weights(feats, np.zeros(3), 1.0)
    exposure = vol_managed_exposure(feats[:, :, 0])
    assert exposure < 1 and w[:-1] == pytest.approx([exposure / 3] * 3)
    assert w[-1] == pytest.approx(1 - exposure)
    from cappuccino_core.common.config import Config
    assert trading_settings(Config(), ens).min_rebalance_weight == HOLD_BAND


def test_the_benchmark_sees_the_stop_and_its_absence(shared_data):
    """On the falling window a 10% trailing stop sells (and a 10-ATR one), none sells
    nothing."""
    symbols = holding_rules.ASSETS["default"][:3]
    src = holding_rules.CsvSource(shared_data, "1h", 3600)
    lo_t = pd.Timestamp("2022-05-01", tz="UTC")
    hi_t = pd.Timestamp("2022-06-01", tz="UTC")
    bars = holding_rules.align({s: src.fetch(s, lo_t - holding_rules.HISTORY, hi_t)
                                for s in symbols}, symbols, 3600)
    features = holding_rules.compute_features(bars, "v1")
    lo, hi = int(bars.index.searchsorted(lo_t)), len(bars)
    hold = holding_rules.HoldEqualWeight(len(symbols))
    stopped = holding_rules.run(hold, bars, features, lo, hi, holding_rules.parse_rule("0.10"))
    held = holding_rules.run(hold, bars, features, lo, hi, holding_rules.parse_rule("none"))
    at_close = holding_rules.run(hold, bars, features, lo, hi, holding_rules.parse_rule("0.10@close"))
    assert 0 < at_close.stops and at_close.equity[-1] != stopped.equity[-1]
    by_atr = holding_rules.run(hold, bars, features, lo, hi, holding_rules.parse_rule("atr10"))
    assert 0 < by_atr.stops and by_atr.equity[-1] != stopped.equity[-1]
    assert stopped.stops > 0 and held.stops == 0
    managed = holding_rules.run(holding_rules.VolManagedHold(features), bars, features, lo, hi,
                                holding_rules.parse_rule("none"))
    assert managed.weights.sum(axis=1).min() < held.weights.sum(axis=1).min()  # it de-risked
