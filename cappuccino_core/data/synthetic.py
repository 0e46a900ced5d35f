"""A seeded synthetic market with a planted, learnable signal, for learning tests.

Each asset has a hidden trend regime, up or down, that persists (it flips with probability
`1 / mean_regime_bars` each bar). Log returns are `regime * drift + noise`. Regimes are
symmetric, so buy-and-hold earns nothing on average, but a regime shows in every momentum
feature (ret_24h, MACD, breakout, ...) long before it ends: a policy that holds the assets in
an up regime and cash otherwise earns roughly `drift` per held bar. The signal-to-noise ratio is
set by `drift / vol`. Same seed, same market, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .bars import Bars


def synthetic_market(n_assets: int = 4, n_bars: int = 4000, seed: int = 0,
                     drift: float = 0.003, vol: float = 0.008, mean_regime_bars: float = 150.0,
                     start: str = "2022-01-01", bar_seconds: int = 3600) -> Bars:
    rng = np.random.default_rng(seed)
    regime = _draw_regime(rng, n_bars, n_assets, mean_regime_bars)
    log_ret = regime * drift + vol * rng.standard_normal((n_bars, n_assets))
    start_price = 10.0 ** rng.uniform(-1, 4, size=n_assets)  # 0.1 .. 10,000
    close = start_price * np.exp(np.cumsum(log_ret, axis=0))
    open_ = np.vstack([start_price, close[:-1]])
    wick = np.abs(rng.standard_normal((2, n_bars, n_assets))) * vol / 2
    high = np.maximum(open_, close) * (1 + wick[0])
    low = np.minimum(open_, close) * (1 - wick[1])
    volume = np.exp(rng.normal(8.0, 0.5, size=(n_bars, n_assets)))
    ohlcv = np.stack([open_, high, low, close, volume], axis=-1)
    index = pd.date_range(start, periods=n_bars, freq=pd.Timedelta(seconds=bar_seconds),
                          tz="UTC", name="t")
    symbols = tuple(f"SYN{i}/USD" for i in range(n_assets))
    return Bars(symbols, index, ohlcv, np.zeros((n_bars, n_assets), dtype=bool))


def planted_regime(n_assets: int = 4, n_bars: int = 4000, seed: int = 0,
                   mean_regime_bars: float = 150.0) -> np.ndarray:
    """The hidden regimes of `synthetic_market` with the same arguments (for tests)."""
    return _draw_regime(np.random.default_rng(seed), n_bars, n_assets, mean_regime_bars)


def _draw_regime(rng: np.random.Generator, n_bars: int, n_assets: int,
                 mean_regime_bars: float) -> np.ndarray:
    """+1/-1 per bar and asset; the first draws of `rng`, so both functions above agree."""
    flips = rng.random((n_bars, n_assets)) < 1.0 / mean_regime_bars
    first = rng.choice([-1.0, 1.0], size=n_assets)
    return first * np.where(np.cumsum(flips, axis=0) % 2 == 0, 1.0, -1.0)
