"""Feature sets `v1` (per-asset technical features) and `v2` (v1 plus longer trends and the
market around each asset), vectorised and causal.

Every feature at row t uses bars up to and including t only (rolling windows that end at t,
recursive EMAs started at the first bar), so appending future bars never changes an earlier
row. The first `WARMUP` rows are NaN; recursive indicators forget their start after a few times
their span, so a live trader that computes them over `LIVE_HISTORY` bars gets the same values as
training did (difference below 1e-12).

Price-level-free by construction (ratios and logs), so one model can serve assets from 0.05 to
100,000. Normalisation is not done here: the environment fits it on the training segment only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from .bars import Bars

FEATURE_NAMES = (
    "ret_1h", "ret_4h", "ret_24h", "ret_168h", "vol_24h", "volume_ratio_24h",
    "macd", "macd_hist", "rsi_14", "cci_20", "adx_14", "dx_14", "atr_regime",
    "breakout_24h", "breakdown_24h", "range_pos_168h",
)
# v2 adds what v1 cannot show an agent that sees one asset's last bars: a two-week trend and
# the distance from its high (the horizons where crypto momentum has been documented: Liu &
# Tsyvinski, "Risks and Returns of Cryptocurrency", 2021), the volatility regime, and the
# market: each asset's return against the mean of all configured assets, and that mean.
V2_EXTRA = (
    "ret_336h", "trend_168h", "drawdown_336h", "vol_168h",
    "rel_ret_24h", "rel_ret_168h", "mkt_ret_24h", "mkt_ret_168h", "mkt_trend_168h",
)
FEATURE_SETS = {"v1": FEATURE_NAMES, "v2": FEATURE_NAMES + V2_EXTRA}
WARMUP = 336  # two 168-bar windows: ATR regime = ATR over its 168-bar mean
LIVE_HISTORY = 1000  # bars a live caller passes in: warm-up plus time for EMAs to forget


def _ema(x: pd.DataFrame, span: float | None = None, alpha: float | None = None) -> pd.DataFrame:
    return x.ewm(span=span, alpha=alpha, adjust=False).mean()


def _wilder(x: pd.DataFrame, n: int) -> pd.DataFrame:
    return _ema(x, alpha=1.0 / n)


def rsi(close: pd.DataFrame, n: int = 14) -> pd.DataFrame:
    delta = close.diff()
    gain = _wilder(delta.clip(lower=0), n)
    loss = _wilder((-delta).clip(lower=0), n)
    return 100 - 100 / (1 + gain / loss.replace(0, np.nan))


def true_range(high: pd.DataFrame, low: pd.DataFrame, close: pd.DataFrame) -> pd.DataFrame:
    prev = close.shift(1)
    return np.maximum(high - low, np.maximum((high - prev).abs(), (low - prev).abs()))


def atr(high, low, close, n: int = 14) -> pd.DataFrame:
    return _wilder(true_range(high, low, close), n)


def adx_dx(high, low, close, n: int = 14) -> tuple[pd.DataFrame, pd.DataFrame]:
    up = high.diff()
    down = -low.diff()
    plus_dm = up.where((up > down) & (up > 0), 0.0)
    minus_dm = down.where((down > up) & (down > 0), 0.0)
    tr = _wilder(true_range(high, low, close), n)
    plus_di = 100 * _wilder(plus_dm, n) / tr
    minus_di = 100 * _wilder(minus_dm, n) / tr
    total = (plus_di + minus_di).replace(0, np.nan)
    dx = 100 * (plus_di - minus_di).abs() / total
    return _wilder(dx.fillna(0.0), n), dx


def cci(high, low, close, n: int = 20) -> pd.DataFrame:
    tp = (high + low + close) / 3
    values = tp.to_numpy()
    out = np.full(values.shape, np.nan)
    if len(values) >= n:
        win = sliding_window_view(values, n, axis=0)  # (T-n+1, A, n), windows ending at t
        mean_dev = np.abs(win - win.mean(axis=-1, keepdims=True)).mean(axis=-1)
        out[n - 1:] = (values[n - 1:] - win.mean(axis=-1)) / (0.015 * mean_dev)
    return pd.DataFrame(out, index=tp.index, columns=tp.columns)


def feature_names(feature_set: str) -> tuple[str, ...]:
    try:
        return FEATURE_SETS[feature_set]
    except KeyError:
        raise ValueError(f"unknown feature set {feature_set!r} (known: "
                         f"{', '.join(FEATURE_SETS)})") from None


def compute_features(bars: Bars, feature_set: str) -> np.ndarray:
    """Feature tensor `[t, asset, feature]` (float64) in the order of the set's names."""
    names = feature_names(feature_set)
    def frame(name: str) -> pd.DataFrame:
        return pd.DataFrame(bars.field(name), index=bars.index)

    o, h, l, c, v = (frame(n) for n in ("open", "high", "low", "close", "volume"))
    logc = np.log(c)
    ret1 = logc.diff()
    macd = (_ema(c, span=12) - _ema(c, span=26)) / c
    atr14 = atr(h, l, c)
    adx, dx = adx_dx(h, l, c)
    feats = {
        "ret_1h": ret1,
        "ret_4h": logc.diff(4),
        "ret_24h": logc.diff(24),
        "ret_168h": logc.diff(168),
        "vol_24h": ret1.rolling(24).std(),
        "volume_ratio_24h": np.log1p(v) - np.log1p(v.rolling(24).mean()),
        "macd": macd,
        "macd_hist": macd - _ema(macd, span=9),
        "rsi_14": rsi(c) / 100 - 0.5,
        "cci_20": cci(h, l, c) / 100,
        "adx_14": adx / 100,
        "dx_14": dx.fillna(0.0) / 100,
        "atr_regime": np.log(atr14 / atr14.rolling(168).mean()),
        # Close against the range of the previous 24 bars (excluding this one: a close can
        # never exceed its own bar's high, which is how a breakout feature ends up always 0).
        "breakout_24h": logc - np.log(h.shift(1).rolling(24).max()),
        "breakdown_24h": logc - np.log(l.shift(1).rolling(24).min()),
        "range_pos_168h": (c - l.rolling(168).min())
                          / (h.rolling(168).max() - l.rolling(168).min()),
    }
    if feature_set == "v2":
        feats.update(_v2_extra(feats, logc, ret1, h, c))
    out = np.stack([feats[name].to_numpy(dtype="float64") for name in names], axis=-1)
    out[:WARMUP] = np.nan
    # An indicator undefined after warm-up (a flat window: no range, no losses) reads as neutral.
    out[WARMUP:] = np.nan_to_num(out[WARMUP:], nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _v2_extra(v1: dict, logc, ret1, high, close) -> dict:
    """The columns v2 adds; the market columns are means over the configured assets at the
    same bar (every asset is closed at t, so they are as causal as the rest)."""
    def market(x: pd.DataFrame) -> pd.DataFrame:
        mean = x.mean(axis=1)
        return pd.DataFrame({col: mean for col in x.columns}, index=x.index)

    trend = logc - np.log(close.rolling(168).mean())
    return {
        "ret_336h": logc.diff(336),
        "trend_168h": trend,
        "drawdown_336h": logc - np.log(high.rolling(336).max()),
        "vol_168h": ret1.rolling(168).std(),
        "rel_ret_24h": v1["ret_24h"] - market(v1["ret_24h"]),
        "rel_ret_168h": v1["ret_168h"] - market(v1["ret_168h"]),
        "mkt_ret_24h": market(v1["ret_24h"]),
        "mkt_ret_168h": market(v1["ret_168h"]),
        "mkt_trend_168h": market(trend),
    }
