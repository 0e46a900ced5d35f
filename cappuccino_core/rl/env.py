"""The trading environment: one arithmetic for training, backtests and live trading.

A long-only spot portfolio over a fixed list of assets. `BatchedTradingEnv` steps N independent
episodes at once as torch tensors (CPU or GPU). The portfolio arithmetic is in plain functions
(`clip_weights`, `rebalance`, `stop_level`, `apply_stops`) that the live trader calls too, with
N = 1, so a model is never served through different arithmetic from the one it was trained on.

Timing. A decision at index t sees bars up to and including t (closed). Its orders fill at the
OPEN of bar t+1, then the portfolio lives through bars t+1 .. t+k (k = `decision_bars`, the
decision cadence): stops are checked in each bar against its open, low and close, and the
step's reward is taken at bar t+k's close, where the next decision is made. No look-ahead.

Action and observation share one order: assets in the configured order, then cash. An action is
target weights `[w_asset_1 .. w_asset_A, w_cash]` (a policy's output becomes them through its
action space, rl/actions.py; a NaN asset weight holds that asset: no order); an observation
starts with the portfolio's current weights in the same layout, then each asset's re-entry cooldown (the share of
`reentry_cooldown_bars` still to wait, 0 when it may be bought), then each asset's room to its
stop (`stop_room`: 1 at its peak, not held or no stop; 0 at the stop level), followed by the
normalised features of the last `lookback` bars (newest first). The agent sees its risk rules.

Action. Target weights per asset plus cash (non-negative, summing to 1). They are clipped to
`max_position_pct` per asset and scaled so that `min_cash_reserve_pct` stays in cash; orders
are the differences to the current holdings in value, skipped when smaller than
`min_order_notional` or than `min_rebalance_weight` of equity. Selling to a zero weight sells
every unit. Slippage (`slippage_bps`, against the trader) is paid on every fill, and fees
(`fee`, a fraction of notional) as Alpaca charges crypto: a sell's fee comes out of the cash
proceeds; a BUY's fee comes out of the asset received (ordering q units leaves q x (1 - fee)
in the position, and the cash pays q x price only; alpaca-py issue #374, Alpaca's crypto fee
page). Buys are scaled down, if needed, so cash never goes negative.

Re-entry after a stop (the cure for a stop that churns: exit, then buy back at the next open):
an asset a stop exited is not bought for the next `reentry_cooldown_bars` bars; it may be held
and sold as usual. The live trader applies the same rule (trading/trader.py).

Stops, the rule the trader applies live (see `apply_stops`): peak = highest price since entry;
exit the WHOLE position when price <= peak x (1 - trailing_stop_pct), or when price <=
entry x (1 - stop_loss_pct). On hourly bars: a bar opening at or below the stop level exits at
the open; else a low reaching the level exits at the level; then the peak takes the bar's high,
and a close at or below the new level exits at that level (the price crossed it on the way down).
With `stop_check: close` only closes count: the peak is the highest close since entry and a
close at or below the level exits at that close. `trailing_stop_pct: None`: no trailing stop.

Reward, documented: `log_growth` is log(equity_after / equity_before) net of every fee and
slippage; `excess` subtracts the log return of an equal-weight buy-and-hold over the same bar.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from ..data.bars import Bars
from ..data.features import WARMUP
from .env_settings import EnvSettings, Normalisation

ATR_BARS = 14  # the average true range's window, for a volatility-scaled trailing stop

__all__ = ["EnvSettings", "Normalisation", "BatchedTradingEnv", "Market", "rebalance",
           "apply_stops", "clip_weights", "stop_level", "update_entry", "portfolio_weights",
           "cooldown_share", "next_cooldown", "stop_room",
           "live_observation", "observation_size"]

# --- the shared arithmetic ------------------------------------------------------------------

def clip_weights(target: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """Asset weights `[..., A]` (the cash weight is what remains) within the caps."""
    w = target.clamp(0.0, s.max_position_pct)
    room = 1.0 - s.min_cash_reserve_pct
    total = w.sum(-1, keepdim=True)
    return torch.where(total > room, w * (room / total.clamp_min(1e-12)), w)


def rebalance(units: torch.Tensor, cash: torch.Tensor, target: torch.Tensor,
              price: torch.Tensor, s: EnvSettings, no_buy: torch.Tensor | None = None):
    """Trade `units [..., A]` towards asset weights `target [..., A]` at `price`; assets in
    `no_buy` (cooling down after a stop) are not bought, assets whose target is NaN (HOLD)
    are not traded.

    Returns (new_units, new_cash, fees, traded_notional, fill_price). Sells are filled first;
    buys are then scaled to the cash available after fees."""
    slip = s.slippage_bps * 1e-4
    value = units * price
    equity = cash + value.sum(-1)
    held = target.isnan()  # HOLD (rl/actions.py): no order for the asset
    w = clip_weights(torch.where(held, value / equity.unsqueeze(-1), target), s)
    delta = w * equity.unsqueeze(-1) - value
    small = (delta.abs() < s.min_order_notional) | \
            (delta.abs() < s.min_rebalance_weight * equity.unsqueeze(-1))
    close_out = (w <= 0) & (units > 0) & ~held  # sell every unit, not a value's worth
    delta = torch.where((small | held) & ~close_out, torch.zeros_like(delta), delta)

    sell_px = price * (1 - slip)
    sell_units = torch.where(close_out, units, (-delta).clamp_min(0) / price)
    sell_units = torch.minimum(sell_units, units)
    proceeds = (sell_units * sell_px).sum(-1)
    sell_fees = proceeds * s.fee
    cash = cash + proceeds - sell_fees

    buy_px = price * (1 + slip)
    buy_value = delta.clamp_min(0)  # notional wanted, at the quoted price
    if no_buy is not None:
        buy_value = torch.where(no_buy, torch.zeros_like(buy_value), buy_value)
    cost = (buy_value * (1 + slip)).sum(-1)
    scale = torch.where(cost > cash, cash / cost.clamp_min(1e-300), torch.ones_like(cost))
    buy_value = buy_value * scale.clamp(0, 1).unsqueeze(-1)
    buy_units = buy_value / price  # what is ordered
    buy_notional = (buy_units * buy_px).sum(-1)
    cash = cash - buy_notional
    # The buy fee is taken from the asset received (as Alpaca charges crypto): the cash pays
    # the notional only, and the position grows by the ordered units less the fee.
    buy_fees = buy_notional * s.fee
    received = buy_units * (1 - s.fee)

    new_units = units - sell_units + received
    fill_price = torch.where(buy_units > 0, buy_px, sell_px)
    return new_units, cash, sell_fees + buy_fees, proceeds + buy_notional, fill_price


def stop_level(peak: torch.Tensor, entry: torch.Tensor, s: EnvSettings,
               atr: torch.Tensor | None = None) -> torch.Tensor:
    """The price at or below which a position is exited (0 when no stop is configured).
    `atr`: each asset's average true range as of the bar before (for `trailing_stop_atr`)."""
    level = torch.zeros_like(peak)
    if s.trailing_stop_pct is not None:
        level = torch.maximum(level, peak * (1 - s.trailing_stop_pct))
    if s.trailing_stop_atr is not None and atr is not None:
        level = torch.maximum(level, peak - s.trailing_stop_atr * atr)
    if s.stop_loss_pct is not None:
        level = torch.maximum(level, entry * (1 - s.stop_loss_pct))
    return level


def average_true_range(ohlc: np.ndarray, bars: int = ATR_BARS) -> np.ndarray:
    """`[T, A]`: the mean true range of the `bars` bars up to and including each bar, from
    `ohlc [T, 4, A]` (the first bars: the mean of those there are)."""
    high, low, close = ohlc[:, 1], ohlc[:, 2], ohlc[:, 3]
    prev = np.vstack([close[:1], close[:-1]])
    true_range = np.maximum(high - low, np.maximum(abs(high - prev), abs(low - prev)))
    csum = np.cumsum(np.nan_to_num(true_range), axis=0)
    out = np.empty_like(csum)
    head = min(bars, len(csum))
    out[:head] = csum[:head] / np.arange(1, head + 1)[:, None]
    out[bars:] = (csum[bars:] - csum[:-bars]) / bars
    return out


def apply_stops(units, cash, peak, entry, bar_open, high, low, close, s: EnvSettings,
                atr: torch.Tensor | None = None):
    """Live the bar for held positions: stop exits (whole position) and the peak update.

    Returns (units, cash, peak, entry, fees, exit_notional, stopped mask, exit price where
    stopped). With one price (a live tick) pass it as open, high, low and close.
    `stop_check: close` looks at the close only: the peak is the highest close since entry,
    and a close at or below the level exits at that close (wicks and gaps within the bar are
    lived through)."""
    slip = s.slippage_bps * 1e-4
    held = units > 0
    if s.stop_check == "close":
        hit = held & (close <= stop_level(peak, entry, s, atr))
        exit_px = close
        peak_after = torch.where(held, torch.maximum(peak, close), peak)
    else:
        peak = torch.where(held, torch.maximum(peak, bar_open), peak)
        level = stop_level(peak, entry, s, atr)
        hit_open = held & (bar_open <= level)
        hit_low = held & ~hit_open & (low <= level)
        exit_px = torch.where(hit_open, bar_open, level)
        peak_after = torch.where(held, torch.maximum(peak, high), peak)
        level_after = stop_level(peak_after, entry, s, atr)
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
class Market:
    """Prices and normalised features on one device: `ohlc [T, 4, A]` (float64) and
    `features [T, A, F]` (float32)."""
    ohlc: torch.Tensor
    features: torch.Tensor
    first_valid: int  # first row with defined features
    atr: torch.Tensor | None = None  # [T, A] average true range up to each bar (float64)

    @classmethod
    def from_bars(cls, bars: Bars, norm: Normalisation, device="cpu", *,
                  features: np.ndarray, prices: "Market | None" = None) -> "Market":
        """`prices`: a Market of the same bars whose price tensor this one shares (several
        splits' normalisations in one env)."""
        normed = np.nan_to_num(norm.apply(features), nan=0.0).astype(np.float32)
        if prices is None:
            ohlc = np.ascontiguousarray(bars.ohlcv[:, :, :4].transpose(0, 2, 1))
            atr = torch.as_tensor(average_true_range(ohlc), dtype=torch.float64, device=device)
            ohlc = torch.as_tensor(ohlc, dtype=torch.float64, device=device)
        else:
            ohlc, atr = prices.ohlc, prices.atr
        return cls(ohlc, torch.as_tensor(normed, device=device), WARMUP, atr)

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
        """Row t: 1 + 3A zero columns (the env writes the portfolio weights there, assets then
        cash, the assets' cooldowns and their room to their stops), then the features of bars t, t-1, ...,
        t-lookback+1. One row gather builds a whole observation."""
        T, A, F = self.features.shape
        head = portfolio_columns(A)
        table = torch.zeros(T, head + lookback * A * F, device=self.features.device)
        flat = self.features.reshape(T, A * F)
        for lag in range(lookback):
            cols = slice(head + lag * A * F, head + (lag + 1) * A * F)
            table[lag:, cols] = flat[:T - lag]
        return table


def live_observation(normalised: np.ndarray, lookback: int, position_weights: np.ndarray,
                     cash_weight: float, cooldown: np.ndarray,
                     room: np.ndarray) -> torch.Tensor:
    """One observation, laid out exactly as `Market.observation_table` + `observe` lay it out,
    from the most recent normalised feature rows `[.., A, F]` (oldest first), each asset's
    share of its re-entry cooldown still to wait and its room to its stop (`stop_room`)."""
    window = normalised[-lookback:][::-1]  # lag 0 first
    row = np.concatenate([position_weights, [cash_weight], cooldown, room, window.reshape(-1)])
    return torch.as_tensor(row, dtype=torch.float32).unsqueeze(0)


def portfolio_columns(n_assets: int) -> int:
    """Weights (assets, cash), then the assets' cooldowns, then their room to their stops."""
    return 1 + 3 * n_assets


def observation_size(n_assets: int, n_features: int, lookback: int) -> int:
    return portfolio_columns(n_assets) + lookback * n_assets * n_features


# --- the batched environment ----------------------------------------------------------------

@dataclass(frozen=True)
class Episodes:
    """Where episodes may run: per row, the segments [lo, hi) of its split, drawn by length.
    Tensors `[N, S]` are padded to the split with the most segments (padded lengths are
    infinite, so no draw lands on them)."""
    seg_lo: torch.Tensor
    seg_hi: torch.Tensor
    seg_cum: torch.Tensor
    seg_last: torch.Tensor  # [N]: the index of a row's last real segment
    total: torch.Tensor  # [N]: a row's segments' total length
    episode_bars: int
    fixed_start: bool
    seed: torch.Tensor  # per row, a tensor: a compiled step is not recompiled per seed


_LCG_A, _LCG_C, _LCG_M = 1103515245, 12345, 2**31


def _uniform(env_ids: torch.Tensor, counter: torch.Tensor, salt: int,
             seed: torch.Tensor) -> torch.Tensor:
    """A counter-based pseudo-random number in [0, 1) per environment: integer arithmetic
    only (no generator state), so a whole step can be compiled and never waits on the GPU."""
    mask = _LCG_M - 1  # x & mask == x mod 2**31 (also for negatives), without a division
    x = (env_ids * 7919 + counter * 104729 + seed * 31 + salt) & mask
    x = (x * _LCG_A + _LCG_C) & mask
    x = (x * _LCG_A + _LCG_C) & mask  # two rounds decorrelate neighbouring environments
    return x.double() / _LCG_M


def draw_episodes(ep: Episodes, env_ids: torch.Tensor, counter: torch.Tensor):
    """(start, end) indices of a new episode for every environment."""
    if ep.fixed_start:
        seg = torch.zeros_like(env_ids)
    else:
        u = _uniform(env_ids, counter, 1, ep.seed) * ep.total
        # searchsorted(seg_cum, u, right=True) as a count: it fuses into a compiled step
        seg = torch.minimum((ep.seg_cum <= u.unsqueeze(-1)).sum(-1), ep.seg_last)
    lo = ep.seg_lo.gather(1, seg.unsqueeze(-1)).squeeze(-1)
    hi = ep.seg_hi.gather(1, seg.unsqueeze(-1)).squeeze(-1)
    if ep.fixed_start:
        start = lo
    else:
        span = (hi - 1 - lo - ep.episode_bars).clamp_min(1)
        start = lo + (_uniform(env_ids, counter, 2, ep.seed) * span).long()
    return start, torch.minimum(start + ep.episode_bars, hi - 1)


def portfolio_weights(units, cash, close_t) -> torch.Tensor:
    """`[N, A+1]`: each position's weight, then the cash weight, at the closes `close_t`."""
    value = units * close_t
    equity = cash + value.sum(-1)
    return torch.cat([value / equity.unsqueeze(-1), (cash / equity).unsqueeze(-1)], -1).float()


def cooldown_share(cooldown: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """`[N, A]`: the share of the re-entry cooldown each asset still has to wait."""
    return (cooldown / max(s.reentry_cooldown_bars, 1)).float()


def stop_room(units: torch.Tensor, peak: torch.Tensor, entry: torch.Tensor,
              close: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """`[N, A]`: how far each asset's price is above its stop level, as a share of the stop's
    width (the wider of the trailing stop and the stop loss): 1 at the peak, 0 at the stop;
    1 for an asset not held, and everywhere when no stop is configured."""
    width = max(s.trailing_stop_pct or 0.0, s.stop_loss_pct or 0.0)
    ones = torch.ones_like(units, dtype=torch.float32)
    if width == 0.0:
        return ones
    room = ((close - stop_level(peak, entry, s)) / close / width).clamp(0.0, 1.0)
    return torch.where(units > 0, room.float(), ones)


def next_cooldown(cooldown: torch.Tensor, stopped: torch.Tensor, s: EnvSettings) -> torch.Tensor:
    """Bars each asset must still wait before it may be bought: a stop starts the full
    cooldown, every bar lived through counts one down."""
    return torch.where(stopped, torch.full_like(cooldown, float(s.reentry_cooldown_bars)),
                       (cooldown - 1).clamp_min(0))


def observe(obs_table, t, weights, out: torch.Tensor | None = None) -> torch.Tensor:
    """Portfolio weights, cooldowns and stop room, then the features window (one row of the
    table); into `out` when given (a rollout buffer's row: no fresh allocation, which costs
    more than the copy)."""
    obs = torch.index_select(obs_table, 0, t, out=out)
    obs[:, :weights.shape[1]] = weights
    return obs


def env_step(state: tuple, weights, counter, env_ids, ohlc, atr, ep: Episodes, s: EnvSettings,
             with_info: bool = True):
    """One decision for every episode: orders at the next open, then `decision_bars` bars
    lived through (stops checked in each), reward at the last one's close; finished episodes
    restart. A pure tensor function, so that it can be compiled whole (see
    BatchedTradingEnv's `compile`). The observation is gathered outside: a row copy
    (index_select) beats any compiled element-wise gather."""
    units, cash, entry, peak, t, t_end, cooldown = state
    target = weights[:, :-1].double()  # asset weights; cash is what remains
    counter = counter + 1
    close = ohlc[:, 3]
    close_t = close.index_select(0, t)
    eq_before = cash + (units * close_t).sum(-1)
    o = ohlc[:, 0].index_select(0, t + 1)
    ordered, cash, fees, traded, fill = rebalance(units, cash, target, o, s, no_buy=cooldown > 0)
    entry, peak = update_entry(units, ordered, entry, peak, fill)
    held, stops, equity_bars = ordered, torch.zeros_like(cash), []
    for j in range(1, s.decision_bars + 1):  # the bars until the next decision
        o, h, lo, c = ohlc.index_select(0, t + j).unbind(1)
        held, cash, peak, entry, stop_fees, stop_notional, stopped, exit_px = apply_stops(
            held, cash, peak, entry, o, h, lo, c, s,
            None if s.trailing_stop_atr is None else atr.index_select(0, t + j - 1))
        cooldown = next_cooldown(cooldown, stopped, s)
        fees, traded, stops = fees + stop_fees, traded + stop_notional, stops + stopped.sum(-1)
        equity_bars.append(cash + (held * c).sum(-1))
    eq_after = equity_bars[-1]
    reward = torch.log(eq_after / eq_before)
    if s.reward == "excess":
        reward = reward - torch.log((c / close_t).mean(-1))
    info = {"equity": eq_after, "equity_bars": torch.stack(equity_bars, -1), "fees": fees,
            "turnover": traded, "stops": stops, "stopped": stopped, "exit_price": exit_px,
            "units_before": units, "units_after_orders": ordered} if with_info else {}

    nxt = t + s.decision_bars
    done = nxt + s.decision_bars > t_end  # the next decision could not live its bars through
    if not torch.compiler.is_compiling() and done.device.type == "cpu" and not bool(done.any()):
        new_state = (held, cash, entry, peak, nxt, t_end, cooldown)  # eager on CPU: no restarts
    else:
        start, end = draw_episodes(ep, env_ids, counter)
        row = done.unsqueeze(-1)
        new_state = (held.masked_fill(row, 0.0), torch.where(done, s.initial_cash, cash),
                     entry.masked_fill(row, 0.0), peak.masked_fill(row, 0.0),
                     torch.where(done, start, nxt), torch.where(done, end, t_end),
                     cooldown.masked_fill(row, 0.0))
    close_next = close.index_select(0, new_state[4])
    return new_state, counter, reward.float(), done, info, torch.cat([portfolio_weights(
        new_state[0], new_state[1], close_next), cooldown_share(new_state[6], s),
        stop_room(new_state[0], new_state[3], new_state[2], close_next, s)], -1)


class BatchedTradingEnv:
    """N episodes stepped together. Episodes start at pseudo-random points of the given
    segments (contiguous index ranges [lo, hi) of the market, never glued to one another),
    run `episode_bars` bars (one decision every `decision_bars`) or to the segment's end, and
    restart by themselves.

    `BatchedTradingEnv.splits` steps several splits at once (a trial's CV splits, each with its
    own training segments, normalisation and seed): rows [k n, (k+1) n) are split k's, and
    each row sees exactly what it would see in an env of that split alone."""

    def __init__(self, market: Market, segments: list[tuple[int, int]], n_envs: int,
                 settings: EnvSettings, seed: int = 0, fixed_start: bool = False,
                 compile: bool = False):
        self._setup([market], [segments], n_envs, settings, [seed], fixed_start, compile)

    @classmethod
    def splits(cls, markets: list[Market], segments: list[list[tuple[int, int]]], n_envs: int,
               settings: EnvSettings, seeds: list[int], fixed_start: bool = False,
               compile: bool = False) -> "BatchedTradingEnv":
        """One env for K splits: `markets[k]` (sharing one price tensor; the same Market
        object may serve several splits), `segments[k]`, `seeds[k]`; `n_envs` rows each."""
        env = cls.__new__(cls)
        env._setup(markets, segments, n_envs, settings, seeds, fixed_start, compile)
        return env

    def _setup(self, markets, segments, n_envs, settings, seeds, fixed_start, compile):
        market = markets[0]
        if any(m.ohlc is not market.ohlc and not torch.equal(m.ohlc, market.ohlc)
               for m in markets):
            raise ValueError("the splits of one env must trade the same prices")
        self.m, self.s, self.k, self.n_per_split = market, settings, len(markets), n_envs
        self.n = n_envs * self.k
        self.device = market.ohlc.device
        lo_min = market.first_valid + settings.lookback - 1
        per_split = []
        for segs in segments:
            segs = [(max(lo, lo_min), hi) for lo, hi in segs
                    if hi - max(lo, lo_min) >= settings.decision_bars + 1]
            if not segs:
                raise ValueError("no segment is long enough for one step after the warm-up")
            per_split.append(segs)
        width = max(len(segs) for segs in per_split)
        pad = [segs + [segs[0]] * (width - len(segs)) for segs in per_split]
        seg_lo = torch.tensor([[lo for lo, _ in segs] for segs in pad], device=self.device)
        seg_hi = torch.tensor([[hi for _, hi in segs] for segs in pad], device=self.device)
        count = torch.tensor([len(segs) for segs in per_split], device=self.device)
        cum = torch.cumsum((seg_hi - seg_lo).double(), 1)
        cum = torch.where(torch.arange(width, device=self.device) < count.unsqueeze(-1), cum,
                          torch.full_like(cum, float("inf")))
        row_split = torch.arange(self.k, device=self.device).repeat_interleave(n_envs)
        last = count - 1  # per row from here: no per-step lookup of a row's split
        self.episodes = Episodes(seg_lo[row_split], seg_hi[row_split], cum[row_split],
                                 last[row_split], cum.gather(1, last.unsqueeze(-1))[row_split, 0],
                                 settings.episode_bars, fixed_start,
                                 torch.tensor(seeds, device=self.device)[row_split])
        # each split's rows are numbered from 0, as in an env of that split alone
        self.env_ids = torch.arange(n_envs, device=self.device).repeat(self.k)
        self.counter = torch.zeros((), dtype=torch.long, device=self.device)
        # one observation table per distinct market, stacked; a row reads its split's block
        distinct = list({id(m): m for m in markets}.values())
        block = torch.tensor([[id(d) for d in distinct].index(id(m)) for m in markets],
                             device=self.device)
        self.obs_table = torch.cat([d.observation_table(settings.lookback) for d in distinct])
        self.row_offset = (block * market.ohlc.shape[0])[row_split]
        self.obs_size = observation_size(market.n_assets, market.n_features, settings.lookback)
        # Compiling fuses the ~150 small tensor ops of a step into a few loops; it costs
        # seconds once per process and shape, so it pays off for long runs and large N.
        # Training asks for no `info` (fewer outputs: a faster compiled step).
        # On CPU the compiled loops run over an episode's assets in SIMD vectors of doubles:
        # with up to 8 assets, 256-bit vectors (8 lanes) fit a row that 512-bit ones (16
        # lanes, mostly masked off) waste; measured ~25% faster per step at 7 assets.
        options = ({"cpp.simdlen": 256}
                   if self.device.type == "cpu" and market.n_assets <= 8 else None)
        self._steps = {}
        for with_info in (True, False):
            step = functools.partial(env_step, ep=self.episodes, s=settings,
                                     with_info=with_info)
            self._steps[with_info] = (torch.compile(step, dynamic=False, options=options)
                                      if compile else step)
        self.reset()

    # the portfolio state, one row per episode
    units = property(lambda self: self.state[0])
    cash = property(lambda self: self.state[1])
    entry = property(lambda self: self.state[2])
    peak = property(lambda self: self.state[3])
    t = property(lambda self: self.state[4])
    t_end = property(lambda self: self.state[5])
    cooldown = property(lambda self: self.state[6])  # bars to wait before buying again

    def reset(self) -> torch.Tensor:
        start, end = draw_episodes(self.episodes, self.env_ids, self.counter)
        A, dt = self.m.n_assets, torch.float64
        zeros = torch.zeros(self.n, A, dtype=dt, device=self.device)
        cash = torch.full((self.n,), self.s.initial_cash, dtype=dt, device=self.device)
        self.state = (zeros, cash, zeros.clone(), zeros.clone(), start, end, zeros.clone())
        return self.observe()

    def equity(self) -> torch.Tensor:
        return self.cash + (self.units * self.m.close[self.t]).sum(-1)

    def observe(self) -> torch.Tensor:
        close = self.m.close.index_select(0, self.t)
        return observe(self.obs_table, self.t + self.row_offset, torch.cat([portfolio_weights(
            self.units, self.cash, close), cooldown_share(self.cooldown, self.s),
            stop_room(self.units, self.peak, self.entry, close, self.s)], -1))

    def step(self, weights: torch.Tensor, with_info: bool = True,
             out: torch.Tensor | None = None):
        """`weights [N, A+1]` (assets then cash). Returns (obs, reward, done, info); `info`
        (equity, fees, turnover, stops, ...) is empty when `with_info` is False. The
        observation is written into `out [N, obs_size]` when given."""
        self.state, self.counter, reward, done, info, pw = self._steps[with_info](
            self.state, weights, self.counter, self.env_ids, self.m.ohlc, self.m.atr)
        return observe(self.obs_table, self.t + self.row_offset, pw, out), reward, done, info
