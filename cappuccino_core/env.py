"""The trading environment: one arithmetic for training, backtests and live trading.

A long-only spot portfolio over a fixed list of assets. `BatchedTradingEnv` steps N independent
episodes at once as torch tensors (CPU or GPU). The portfolio arithmetic is in plain functions
(`clip_weights`, `rebalance`, `stop_level`, `apply_stops`) that the live trader calls too, with
N = 1, so a model is never served through different arithmetic from the one it was trained on.

Timing. A decision at index t sees bars up to and including t (closed). Its orders fill at the
OPEN of bar t+1, then the portfolio lives through bar t+1: stops are checked against its low and
close, and the step's reward is taken at its close. No look-ahead.

Action. Target weights per asset plus cash (non-negative, summing to 1). They are clipped to
`max_position_pct` per asset and scaled so that `min_cash_reserve_pct` stays in cash; orders
are the differences to the current holdings in value, skipped when smaller than
`min_order_notional` or than `min_rebalance_weight` of equity. Selling to a zero weight sells
every unit. Fees (`fee`, a fraction of notional) and slippage (`slippage_bps`, against the
trader) are paid on every fill. Buys are scaled down, if needed, so cash never goes negative.

Stops, the rule the trader applies live (see `apply_stops`): peak = highest price since entry;
exit the WHOLE position when price <= peak x (1 - trailing_stop_pct), or when price <=
entry x (1 - stop_loss_pct). On hourly bars: a bar opening at or below the stop level exits at
the open; else a low reaching the level exits at the level; then the peak takes the bar's high,
and a close at or below the new level exits at that level (the price crossed it on the way down).

Reward, documented: `log_growth` is log(equity_after / equity_before) net of every fee and
slippage; `excess` subtracts the log return of an equal-weight buy-and-hold over the same bar.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .data.bars import Bars
from .data.features import WARMUP, compute_features


@dataclass(frozen=True)
class EnvSettings:
    fee: float = 0.0025
    slippage_bps: float = 0.0
    min_order_notional: float = 10.0
    max_position_pct: float = 0.30
    min_cash_reserve_pct: float = 0.05
    trailing_stop_pct: float | None = 0.10
    stop_loss_pct: float | None = None
    min_rebalance_weight: float = 0.0
    initial_cash: float = 100_000.0
    reward: str = "log_growth"
    episode_bars: int = 720
    lookback: int = 4

    @classmethod
    def from_config(cls, cfg, **overrides) -> "EnvSettings":
        """The live risk and fee settings from cappuccino.yaml; hyperparameters override the rest."""
        base = cls(fee=cfg.broker.taker_fee, slippage_bps=cfg.broker.slippage_bps,
                   min_order_notional=cfg.broker.min_order_notional,
                   max_position_pct=cfg.risk.max_position_pct,
                   min_cash_reserve_pct=cfg.risk.min_cash_reserve_pct,
                   trailing_stop_pct=cfg.risk.trailing_stop_pct,
                   stop_loss_pct=cfg.risk.stop_loss_pct, initial_cash=cfg.broker.initial_cash)
        return dataclasses.replace(base, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- the shared arithmetic ------------------------------------------------------------------

def clip_weights(target: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """Asset weights `[..., A]` (the cash weight is what remains) within the caps."""
    w = target.clamp(0.0, s.max_position_pct)
    room = 1.0 - s.min_cash_reserve_pct
    total = w.sum(-1, keepdim=True)
    return torch.where(total > room, w * (room / total.clamp_min(1e-12)), w)


def rebalance(units: torch.Tensor, cash: torch.Tensor, target: torch.Tensor,
              price: torch.Tensor, s: EnvSettings):
    """Trade `units [..., A]` towards asset weights `target [..., A]` at `price`.

    Returns (new_units, new_cash, fees, traded_notional, fill_price). Sells are filled first;
    buys are then scaled to the cash available after fees."""
    slip = s.slippage_bps * 1e-4
    value = units * price
    equity = cash + value.sum(-1)
    w = clip_weights(target, s)
    delta = w * equity.unsqueeze(-1) - value
    small = (delta.abs() < s.min_order_notional) | \
            (delta.abs() < s.min_rebalance_weight * equity.unsqueeze(-1))
    close_out = (w <= 0) & (units > 0)  # sell every unit, not a value's worth
    delta = torch.where(small & ~close_out, torch.zeros_like(delta), delta)

    sell_px = price * (1 - slip)
    sell_units = torch.where(close_out, units, (-delta).clamp_min(0) / price)
    sell_units = torch.minimum(sell_units, units)
    proceeds = (sell_units * sell_px).sum(-1)
    sell_fees = proceeds * s.fee
    cash = cash + proceeds - sell_fees

    buy_px = price * (1 + slip)
    buy_value = delta.clamp_min(0)  # notional wanted, at the quoted price
    cost = (buy_value * (1 + slip)).sum(-1) * (1 + s.fee)
    scale = torch.where(cost > cash, cash / cost.clamp_min(1e-300), torch.ones_like(cost))
    buy_value = buy_value * scale.clamp(0, 1).unsqueeze(-1)
    buy_units = buy_value / price
    buy_notional = (buy_units * buy_px).sum(-1)
    buy_fees = buy_notional * s.fee
    cash = cash - buy_notional - buy_fees

    new_units = units - sell_units + buy_units
    fill_price = torch.where(buy_units > 0, buy_px, sell_px)
    return new_units, cash, sell_fees + buy_fees, proceeds + buy_notional, fill_price


def stop_level(peak: torch.Tensor, entry: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """The price at or below which a position is exited (0 when no stop is configured)."""
    level = torch.zeros_like(peak)
    if s.trailing_stop_pct is not None:
        level = torch.maximum(level, peak * (1 - s.trailing_stop_pct))
    if s.stop_loss_pct is not None:
        level = torch.maximum(level, entry * (1 - s.stop_loss_pct))
    return level


def apply_stops(units, cash, peak, entry, bar_open, high, low, close, s: EnvSettings):
    """Live the bar for held positions: stop exits (whole position) and the peak update.

    Returns (units, cash, peak, entry, fees, exit_notional, stopped mask, exit price where
    stopped). With one price (a live tick) pass it as open, high, low and close."""
    slip = s.slippage_bps * 1e-4
    held = units > 0
    peak = torch.where(held, torch.maximum(peak, bar_open), peak)
    level = stop_level(peak, entry, s)
    hit_open = held & (bar_open <= level)
    hit_low = held & ~hit_open & (low <= level)
    exit_px = torch.where(hit_open, bar_open, level)
    peak_after = torch.where(held, torch.maximum(peak, high), peak)
    level_after = stop_level(peak_after, entry, s)
    hit_close = held & ~hit_open & ~hit_low & (close <= level_after)
    exit_px = torch.where(hit_close, level_after, exit_px)
    hit = hit_open | hit_low | hit_close

    notional = torch.where(hit, units * exit_px * (1 - slip), torch.zeros_like(units))
    fees = notional * s.fee
    cash = cash + (notional - fees).sum(-1)
    units = torch.where(hit, torch.zeros_like(units), units)
    peak = torch.where(units > 0, peak_after, torch.zeros_like(peak))
    entry = torch.where(units > 0, entry, torch.zeros_like(entry))
    return units, cash, peak, entry, fees.sum(-1), notional.sum(-1), hit, exit_px * (1 - slip)


def update_entry(old_units, new_units, entry, peak, fill_price):
    """Entry price (average cost) and peak after a rebalance: a new position starts both at its
    fill price; an added-to position averages its entry; a closed one clears both."""
    bought = (new_units - old_units).clamp_min(0)
    opened = (old_units <= 0) & (new_units > 0)
    avg = (old_units * entry + bought * fill_price) / (old_units + bought).clamp_min(1e-300)
    entry = torch.where(new_units > 0, torch.where(opened, fill_price, avg), torch.zeros_like(entry))
    peak = torch.where(opened, fill_price, torch.where(new_units > 0, peak, torch.zeros_like(peak)))
    return entry, peak


# --- market tensors -------------------------------------------------------------------------

@dataclass
class Normalisation:
    """Per asset and feature mean/std, fitted on training rows only; stored in the model spec."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray, rows: np.ndarray) -> "Normalisation":
        x = features[rows]
        return cls(mean=x.mean(axis=0), std=x.std(axis=0) + 1e-8)

    def apply(self, features: np.ndarray) -> np.ndarray:
        return np.clip((features - self.mean) / self.std, -5, 5)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(mean=np.asarray(d["mean"]), std=np.asarray(d["std"]))


@dataclass
class Market:
    """Prices and normalised features on one device: `ohlc [T, 4, A]` (float64) and
    `features [T, A, F]` (float32)."""
    ohlc: torch.Tensor
    features: torch.Tensor
    first_valid: int  # first row with defined features

    @classmethod
    def from_bars(cls, bars: Bars, norm: Normalisation, device="cpu",
                  features: np.ndarray | None = None) -> "Market":
        feats = compute_features(bars) if features is None else features
        normed = np.nan_to_num(norm.apply(feats), nan=0.0).astype(np.float32)
        ohlc = np.ascontiguousarray(bars.ohlcv[:, :, :4].transpose(0, 2, 1))
        return cls(torch.as_tensor(ohlc, dtype=torch.float64, device=device),
                   torch.as_tensor(normed, device=device), WARMUP)

    @property
    def open(self) -> torch.Tensor:
        return self.ohlc[:, 0]

    @property
    def close(self) -> torch.Tensor:
        return self.ohlc[:, 3]

    @property
    def n_assets(self) -> int:
        return self.ohlc.shape[2]

    @property
    def n_features(self) -> int:
        return self.features.shape[2]

    def observation_table(self, lookback: int) -> torch.Tensor:
        """Row t: 1 + A zero columns (the env writes the portfolio weights there), then the
        features of bars t, t-1, ..., t-lookback+1. One row gather builds a whole observation."""
        T, A, F = self.features.shape
        table = torch.zeros(T, 1 + A + lookback * A * F, device=self.features.device)
        flat = self.features.reshape(T, A * F)
        for lag in range(lookback):
            cols = slice(1 + A + lag * A * F, 1 + A + (lag + 1) * A * F)
            table[lag:, cols] = flat[:T - lag]
        return table


def observation_size(n_assets: int, n_features: int, lookback: int) -> int:
    return 1 + n_assets + lookback * n_assets * n_features


# --- the batched environment ----------------------------------------------------------------

class BatchedTradingEnv:
    """N episodes stepped together. Episodes start at random points of the given segments
    (contiguous index ranges [lo, hi) of the market; a segment is never glued to another),
    run `episode_bars` decisions or to the segment's end, and restart by themselves."""

    def __init__(self, market: Market, segments: list[tuple[int, int]], n_envs: int,
                 settings: EnvSettings, seed: int = 0, fixed_start: bool = False):
        self.m, self.s, self.n = market, settings, n_envs
        self.device = market.close.device
        lo_min = market.first_valid + settings.lookback - 1
        segs = [(max(lo, lo_min), hi) for lo, hi in segments if hi - max(lo, lo_min) >= 2]
        if not segs:
            raise ValueError("no segment is long enough for one step after the warm-up")
        self.seg_lo = torch.tensor([lo for lo, _ in segs], device=self.device)
        self.seg_hi = torch.tensor([hi for _, hi in segs], device=self.device)
        lengths = (self.seg_hi - self.seg_lo).double()
        self.seg_p = lengths / lengths.sum()
        self.fixed_start = fixed_start
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        A, dt = market.n_assets, torch.float64
        self.units = torch.zeros(n_envs, A, dtype=dt, device=self.device)
        self.entry = torch.zeros_like(self.units)
        self.peak = torch.zeros_like(self.units)
        self.cash = torch.full((n_envs,), settings.initial_cash, dtype=dt, device=self.device)
        self.t = torch.zeros(n_envs, dtype=torch.long, device=self.device)
        self.t_end = torch.zeros_like(self.t)
        self.obs_table = market.observation_table(settings.lookback)
        self.obs_size = observation_size(A, market.n_features, settings.lookback)

    def _restart(self, mask: torch.Tensor) -> None:
        k = int(mask.sum())
        if k == 0:
            return
        if self.fixed_start:
            seg = torch.zeros(k, dtype=torch.long, device=self.device)
            start = self.seg_lo[seg]
        else:
            seg = torch.multinomial(self.seg_p, k, replacement=True, generator=self.gen)
            lo, hi = self.seg_lo[seg], self.seg_hi[seg]
            span = (hi - 1 - lo - self.s.episode_bars).clamp_min(1)
            start = lo + (torch.rand(k, generator=self.gen, device=self.device) * span).long()
        self.t[mask] = start
        self.t_end[mask] = torch.minimum(start + self.s.episode_bars, self.seg_hi[seg] - 1)
        self.units[mask] = 0.0
        self.entry[mask] = 0.0
        self.peak[mask] = 0.0
        self.cash[mask] = self.s.initial_cash

    def reset(self) -> torch.Tensor:
        self._restart(torch.ones(self.n, dtype=torch.bool, device=self.device))
        return self.observe()

    def equity(self) -> torch.Tensor:
        return self.cash + (self.units * self.m.close[self.t]).sum(-1)

    def observe(self) -> torch.Tensor:
        obs = self.obs_table.index_select(0, self.t)
        value = self.units * self.m.close[self.t]
        equity = (self.cash + value.sum(-1)).unsqueeze(-1)
        obs[:, 0] = (self.cash / equity[:, 0]).float()
        obs[:, 1:1 + self.m.n_assets] = (value / equity).float()
        return obs

    def step(self, weights: torch.Tensor):
        """`weights [N, A+1]` (assets then cash). Returns (obs, reward, done, info)."""
        m, s, t = self.m, self.s, self.t
        nxt = t + 1
        close_t = m.close[t]
        eq_before = self.cash + (self.units * close_t).sum(-1)
        o, h, lo, c = m.ohlc.index_select(0, nxt).unbind(1)
        old_units = self.units
        units, cash, fees, traded, fill = rebalance(old_units, self.cash,
                                                    weights[:, :-1].double(), o, s)
        entry, peak = update_entry(old_units, units, self.entry, self.peak, fill)
        ordered_units = units
        units, cash, peak, entry, stop_fees, stop_notional, stopped, exit_px = apply_stops(
            units, cash, peak, entry, o, h, lo, c, s)
        self.units, self.cash, self.peak, self.entry = units, cash, peak, entry
        self.t = nxt
        eq_after = cash + (units * c).sum(-1)
        reward = torch.log(eq_after / eq_before)
        if s.reward == "excess":
            reward = reward - torch.log((c / close_t).mean(-1))
        info = {"equity": eq_after, "fees": fees + stop_fees, "turnover": traded + stop_notional,
                "stops": stopped.sum(-1), "stopped": stopped, "exit_price": exit_px,
                "units_before": old_units, "units_after_orders": ordered_units,
                "return": eq_after / eq_before - 1}
        done = self.t >= self.t_end
        self._restart(done)
        return self.observe(), reward.float(), done, info
