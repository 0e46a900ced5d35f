"""Feature sets v1 and v2: no look-ahead, non-constant on real data, checked against plain
loops."""

import numpy as np
import pandas as pd
import pytest

from cappuccino_core.data import align
from cappuccino_core.data.bars import Bars
from cappuccino_core.data.csv_source import CsvSource
from cappuccino_core.data.features import (FEATURE_NAMES, FEATURE_SETS, LIVE_HISTORY, WARMUP,
                                           compute_features, feature_names)
from cappuccino_core.data.synthetic import planted_regime, synthetic_market

ALL13 = ["AAVE/USD", "ADA/USD", "AVAX/USD", "BCH/USD", "BNB/USD", "BTC/USD", "DOGE/USD",
         "ETH/USD", "LINK/USD", "LTC/USD", "SOL/USD", "UNI/USD", "XRP/USD"]


@pytest.fixture(scope="module")
def real_bars(shared_data):
    src = CsvSource(shared_data, "1h", 3600)
    span = pd.Timestamp("2021-01-01", tz="UTC"), pd.Timestamp("2024-01-01", tz="UTC")
    return align({s: src.fetch(s, *span) for s in ALL13}, ALL13, 3600)


SETS = pytest.mark.parametrize("feature_set", sorted(FEATURE_SETS))


@SETS
def test_appending_future_bars_never_changes_an_earlier_row(real_bars, feature_set):
    part = real_bars.slice(0, 3000)
    full = compute_features(real_bars.slice(0, 6000), feature_set)
    early = compute_features(part, feature_set)
    np.testing.assert_array_equal(early[WARMUP:], full[WARMUP:3000])
    # and a shock in the future moves nothing before it
    view = real_bars.slice(0, 6000)  # a view: shock a copy
    shocked = Bars(view.symbols, view.index, view.ohlcv.copy(), view.filled)
    shocked.ohlcv[3000:, :, :4] *= 3.0
    np.testing.assert_array_equal(compute_features(shocked, feature_set)[WARMUP:3000],
                                  full[WARMUP:3000])


@SETS
def test_every_feature_varies_on_real_data(real_bars, feature_set):
    feats = compute_features(real_bars, feature_set)[WARMUP:]
    assert feats.shape[2] == len(feature_names(feature_set))
    assert np.isfinite(feats).all()
    for a, sym in enumerate(real_bars.symbols):
        for f, name in enumerate(feature_names(feature_set)):
            col = feats[:, a, f]
            assert np.std(col) > 1e-6, f"{name} is constant for {sym}"
            # none stuck at one value most of the time (the old breakout feature was always 0)
            assert np.mean(col == np.median(col)) < 0.5, f"{name} mostly one value for {sym}"


@SETS
def test_live_history_reproduces_training_values(real_bars, feature_set):
    """A trader computing features on its last LIVE_HISTORY bars sees what training saw."""
    full = compute_features(real_bars, feature_set)
    t = 20_000
    live = compute_features(real_bars.slice(t - LIVE_HISTORY + 1, t + 1), feature_set)[-1]
    np.testing.assert_allclose(live, full[t], rtol=0, atol=1e-9)


# --- independent reference implementations: plain loops over one asset -------------------------

def loop_ema(x, alpha):
    out, e = np.empty_like(x), x[0]
    for i, v in enumerate(x):
        e = v if i == 0 else alpha * v + (1 - alpha) * e
        out[i] = e
    return out


def loop_rsi(close, n=14):
    gains, losses = [0.0], [0.0]
    for i in range(1, len(close)):
        d = close[i] - close[i - 1]
        gains.append(max(d, 0.0))
        losses.append(max(-d, 0.0))
    # pandas' diff() leaves row 0 undefined; Wilder's average starts at the first change
    g = loop_ema(np.array(gains[1:]), 1 / n)
    lo = loop_ema(np.array(losses[1:]), 1 / n)
    return np.concatenate([[np.nan], 100 - 100 / (1 + g / lo)])


def loop_atr(high, low, close, n=14):
    tr = [high[0] - low[0]]
    for i in range(1, len(close)):
        tr.append(max(high[i] - low[i], abs(high[i] - close[i - 1]), abs(low[i] - close[i - 1])))
    return loop_ema(np.array(tr), 1 / n)


def loop_cci(high, low, close, n=20):
    tp = (high + low + close) / 3
    out = np.full(len(tp), np.nan)
    for i in range(n - 1, len(tp)):
        w = tp[i - n + 1:i + 1]
        out[i] = (tp[i] - w.mean()) / (0.015 * np.mean(np.abs(w - w.mean())))
    return out


def test_indicators_match_plain_loops(real_bars):
    bars = real_bars.slice(0, 2000)
    a = bars.symbols.index("ETH/USD")
    h, l, c = bars.field("high")[:, a], bars.field("low")[:, a], bars.close[:, a]
    feats = compute_features(bars, "v1")[:, a]
    col = {name: feats[:, i] for i, name in enumerate(FEATURE_NAMES)}
    rows = slice(WARMUP, None)
    np.testing.assert_allclose(col["rsi_14"][rows], loop_rsi(c)[rows] / 100 - 0.5, atol=1e-9)
    np.testing.assert_allclose(col["cci_20"][rows], loop_cci(h, l, c)[rows] / 100, atol=1e-9)
    atr = loop_atr(h, l, c)
    atr_mean = pd.Series(atr).rolling(168).mean().to_numpy()
    np.testing.assert_allclose(col["atr_regime"][rows], np.log(atr / atr_mean)[rows], atol=1e-9)
    macd = (loop_ema(c, 2 / 13) - loop_ema(c, 2 / 27)) / c
    np.testing.assert_allclose(col["macd"][rows], macd[rows], atol=1e-12)
    prev_high = np.array([h[max(0, i - 24):i].max() if i else np.nan for i in range(len(h))])
    np.testing.assert_allclose(col["breakout_24h"][rows], np.log(c / prev_high)[rows], atol=1e-12)


def test_v2_is_v1_plus_trends_and_the_market_checked_against_plain_loops(real_bars):
    bars = real_bars.slice(0, 2000)
    v1, v2 = compute_features(bars, "v1"), compute_features(bars, "v2")
    np.testing.assert_array_equal(v2[..., :len(FEATURE_NAMES)], v1)
    col = {name: v2[..., i] for i, name in enumerate(feature_names("v2"))}
    c, h = bars.close, bars.field("high")
    rows, a = range(WARMUP, 2000, 97), bars.symbols.index("LINK/USD")
    for t in rows:
        ret24 = [np.log(c[t, k] / c[t - 24, k]) for k in range(len(bars.symbols))]
        market = sum(ret24) / len(ret24)
        assert col["mkt_ret_24h"][t, a] == pytest.approx(market, abs=1e-12)
        assert col["rel_ret_24h"][t, a] == pytest.approx(ret24[a] - market, abs=1e-12)
        assert col["ret_336h"][t, a] == pytest.approx(np.log(c[t, a] / c[t - 336, a]), abs=1e-12)
        assert col["drawdown_336h"][t, a] == pytest.approx(
            np.log(c[t, a] / max(h[t - 335:t + 1, a])), abs=1e-12)
        assert col["trend_168h"][t, a] == pytest.approx(
            np.log(c[t, a] / np.mean(c[t - 167:t + 1, a])), abs=1e-12)
    # the market columns are one value per bar, the same for every asset
    assert np.ptp(col["mkt_trend_168h"][WARMUP:], axis=1).max() == 0.0


def test_an_unknown_feature_set_is_refused_by_name(real_bars):
    with pytest.raises(ValueError, match="unknown feature set 'v9'.*v1, v2"):
        compute_features(real_bars.slice(0, 500), "v9")


def test_synthetic_market_is_deterministic_and_valid():
    a, b = synthetic_market(seed=3), synthetic_market(seed=3)
    np.testing.assert_array_equal(a.ohlcv, b.ohlcv)
    assert not np.array_equal(a.ohlcv, synthetic_market(seed=4).ohlcv)
    o, h, l, c, v = (a.ohlcv[..., i] for i in range(5))
    assert (l <= np.minimum(o, c)).all() and (h >= np.maximum(o, c)).all() and (l > 0).all()


def test_planted_signal_is_visible_through_the_features():
    bars = synthetic_market(n_assets=4, n_bars=6000, seed=1)
    regime = planted_regime(n_assets=4, n_bars=6000, seed=1)
    feats = compute_features(bars, "v1")[WARMUP:]
    ret24 = feats[..., FEATURE_NAMES.index("ret_24h")]
    agree = np.mean(np.sign(ret24) == regime[WARMUP:])
    assert agree > 0.75
    # ...and it pays: next-bar log return is higher when the momentum feature says up
    nxt = np.diff(np.log(bars.close), axis=0)[WARMUP:]
    up = ret24[:-1] > 0
    assert nxt[up].mean() > 0.001 > -0.001 > nxt[~up].mean()
    # while the market itself has little drift to harvest by just holding
    assert abs(nxt.mean()) < 0.2 * nxt[up].mean()
