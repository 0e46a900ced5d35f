"""Backtests: a policy through the same environment over one contiguous range, and metrics.

Used by the objective (each CV test split), by validation, the report and `cappuccino
backtest`. `trading_settings` is the one definition of the rules a served ensemble trades under
(live risk and costs from the configuration, the no-trade band its members learnt with): the
trader and every backtest of an ensemble use it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.features import FEATURE_NAMES, WARMUP
from .actions import standing
from .env import BatchedTradingEnv, EnvSettings, Market, Normalisation

HOURS_PER_YEAR = 24 * 365


def sharpe(returns: np.ndarray, periods_per_year: float = HOURS_PER_YEAR) -> float:
    """Annualised Sharpe ratio of per-bar simple returns (risk-free 0); 0 for a flat series."""
    r = np.asarray(returns, dtype=float)
    sd = r.std(ddof=1) if len(r) > 1 else 0.0
    return 0.0 if sd < 1e-12 else float(r.mean() / sd * math.sqrt(periods_per_year))


def sortino(returns: np.ndarray, periods_per_year: float = HOURS_PER_YEAR) -> float:
    r = np.asarray(returns, dtype=float)
    downside = np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)) if len(r) else 0.0
    return 0.0 if downside < 1e-12 else float(r.mean() / downside * math.sqrt(periods_per_year))


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough fall, as a positive fraction."""
    e = np.asarray(equity, dtype=float)
    return float(np.max(1 - e / np.maximum.accumulate(e))) if len(e) else 0.0


@dataclass
class BacktestResult:
    equity: np.ndarray          # equity after each bar, starting with the initial cash
    returns: np.ndarray         # per-bar simple returns
    fees: float
    turnover: float             # traded notional / mean equity
    stops: int
    benchmark_equity: np.ndarray  # equal-weight buy-and-hold, same bars, buy fee paid
    weights: np.ndarray         # asset weights chosen at each decision [decisions, A]

    @property
    def benchmark_returns(self) -> np.ndarray:
        return self.benchmark_equity[1:] / self.benchmark_equity[:-1] - 1

    def metrics(self) -> dict:
        years = len(self.returns) / HOURS_PER_YEAR
        total = float(self.equity[-1] / self.equity[0] - 1)
        dd = max_drawdown(self.equity)
        annual = (1 + total) ** (1 / years) - 1 if years > 0 and total > -1 else -1.0
        bh_total = float(self.benchmark_equity[-1] / self.benchmark_equity[0] - 1)
        return {
            "total_return": total, "sharpe": sharpe(self.returns),
            "sortino": sortino(self.returns), "max_drawdown": dd,
            "calmar": annual / dd if dd > 1e-12 else 0.0, "turnover": self.turnover,
            "fees": self.fees, "stops": self.stops, "bars": len(self.returns),
            "bh_total_return": bh_total, "bh_sharpe": sharpe(self.benchmark_returns),
            "bh_max_drawdown": max_drawdown(self.benchmark_equity),
        }


Policy = Callable[[torch.Tensor], torch.Tensor]


class EnsemblePolicy:
    """An ensemble as a backtest policy: each member sees its own observation, built from the
    raw features up to the decision bar and the env's current portfolio weights."""
    needs_time = True

    def __init__(self, ensemble, features: np.ndarray):
        self.ensemble, self.features = ensemble, features

    def __call__(self, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        i, n = int(t[0]), self.features.shape[1]
        head = obs[0].double().numpy()  # weights, cash, cooldowns, room to the stops
        w = self.ensemble.target_weights(self.features[:i + 1], head[:n], float(head[n]),
                                         head[n + 1:2 * n + 1], head[2 * n + 1:3 * n + 1])
        return torch.as_tensor(w, dtype=torch.float32).unsqueeze(0)


def trading_settings(cfg, ensemble) -> EnvSettings:
    """Live risk and fees from the config; the no-trade band the members were trained with
    (their median), so the trader rebalances as they learnt to; holding's for a fallback."""
    band = 0.0
    if ensemble is not None and ensemble.members:
        band = float(np.median([m.spec.rebalance_band for m in ensemble.members]))
    elif ensemble is not None and ensemble.fallback is not None:
        band = HOLD_BAND  # a holding fallback does not chase each hour's drift either
    return EnvSettings.from_config(cfg, min_rebalance_weight=band)


def backtest_ensemble(cfg, ensemble, bars, features, lo: int, hi: int) -> "BacktestResult":
    """An ensemble through the training environment with the live risk rules, deciding at
    bars lo .. hi-2 (a `Window`'s decisions)."""
    settings = dataclasses.replace(trading_settings(cfg, ensemble), lookback=1)
    norm = Normalisation(np.zeros(features.shape[1:]), np.ones(features.shape[1:]))
    market = Market.from_bars(bars, norm, features=features)  # accounting only
    return run_backtest(EnsemblePolicy(ensemble, features), market, lo, hi, settings)


def first_decision_bar(ensemble) -> int:
    """The first bar index every member of `ensemble` has a full feature window for."""
    return WARMUP + ensemble.max_lookback - 1


# Holding does not chase the drift between a close and the next open: a 2% no-trade band.
HOLD_BAND = 0.02


class HoldEqualWeight:
    """Equal-weight buy-and-hold as a policy under the same rules as an agent: buys equal
    weights, then holds what it has (asks for its current weights, read from the observation,
    see env.py); an asset a stop sold is bought back at an equal weight once its re-entry
    cooldown has passed. Run it with `hold_settings`."""

    def __init__(self, n_assets: int):
        self.n = n_assets

    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        n = self.n
        held, cooling = obs[:, :n], obs[:, n + 1:2 * n + 1]
        w = torch.where((held < 1e-9) & (cooling <= 0), torch.full_like(held, 1.0 / n), held)
        return torch.cat([w, (1 - w.sum(-1, keepdim=True)).clamp_min(0)], -1)


# Volatility-managed holding (issue 26): equal weights scaled by target / realised volatility
# of the equal-weight basket, at most fully invested, the rest in cash.
VOL_WINDOW = 168      # the realised volatility: a week of hourly basket returns
TARGET_WINDOW = 720   # the target: the median of that volatility over the last 30 days
EXPOSURE_STEP = 0.1   # exposure moves in steps of 10%: a band against trading on noise
RET_1H = FEATURE_NAMES.index("ret_1h")  # the hourly log return, in every feature set


def vol_managed_exposure(ret_1h: np.ndarray) -> float:
    """The share of equity in the equal-weight basket given the assets' hourly log returns
    `[T, A]` up to the decision bar: target / realised volatility, at most 1, rounded to
    `EXPOSURE_STEP`; 1 while there are fewer than `VOL_WINDOW` returns to measure. Needs at
    most `VOL_WINDOW + TARGET_WINDOW` rows (a live trader passes `LIVE_HISTORY`, 1000)."""
    recent = ret_1h[-(VOL_WINDOW + TARGET_WINDOW - 1):]
    basket = np.nanmean(np.where(np.isfinite(recent), recent, np.nan), axis=1)
    basket = basket[np.isfinite(basket)]
    if len(basket) < VOL_WINDOW:
        return 1.0
    vols = np.lib.stride_tricks.sliding_window_view(basket, VOL_WINDOW).std(axis=1)
    if vols[-1] <= 0:
        return 1.0
    return float(np.round(min(1.0, np.median(vols) / vols[-1]) / EXPOSURE_STEP) * EXPOSURE_STEP)


def vol_managed_weights(features: np.ndarray) -> np.ndarray:
    """Target weights `[A+1]` of volatility-managed holding from raw features `[T, A, F]`."""
    n = features.shape[1]
    exposure = vol_managed_exposure(features[:, :, RET_1H])
    return np.concatenate([np.full(n, exposure / n), [1.0 - exposure]])


class VolManagedHold:
    """Volatility-managed holding as a backtest policy: the weights the `hold_vol_managed`
    fallback serves (`vol_managed_weights`), from raw features up to the decision bar. Run it
    with `hold_settings`, as the trader does a fallback."""
    needs_time = True

    def __init__(self, features: np.ndarray):
        self.features = features

    def __call__(self, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = vol_managed_weights(self.features[:int(t[0]) + 1])
        return torch.as_tensor(w, dtype=torch.float32).unsqueeze(0)


def hold_settings(settings: EnvSettings) -> EnvSettings:
    """The same risk rules and costs, holding's no-trade band."""
    return dataclasses.replace(settings, min_rebalance_weight=HOLD_BAND)


@torch.no_grad()
def run_backtest(policy: Policy, market: Market, lo: int, hi: int,
                 settings: EnvSettings) -> BacktestResult:
    """Decisions at bars lo, lo+k, ... (k = `decision_bars`; each filled at the next bar's
    open) while their k bars fit before hi; one episode, N = 1."""
    return run_backtests(policy, [market], [(lo, hi)], settings)[0]


@torch.no_grad()
def run_backtests(policy: Policy, markets: list[Market], ranges: list[tuple[int, int]],
                  settings: EnvSettings) -> list[BacktestResult]:
    """Several backtests at once, one per row: row r decides at bars ranges[r] = (lo, hi) on
    markets[r] (one price tensor, each its own normalisation); `policy` maps the rows'
    observations `[R, obs]` to weights `[R, A+1]`. Each row is exactly the single backtest
    of its range; a row that has finished steps on, unrecorded, until the longest one ends.
    Equity, and so every metric, is per bar whatever the decision cadence."""
    s = dataclasses.replace(settings, episode_bars=max(hi - 1 - lo for lo, hi in ranges))
    env = BatchedTradingEnv.splits(markets, [[r] for r in ranges], 1, s, [0] * len(ranges),
                                   fixed_start=True)
    obs = env.reset()
    k = s.decision_bars
    starts, lengths = env.t.tolist(), ((env.t_end - env.t) // k).tolist()  # decisions
    steps = {"weights": [], "equity": [], "fees": [], "turnover": [], "stops": []}
    stood = None  # what each row's policy stands by (a held asset: its last target)
    for _ in range(max(lengths)):
        w = policy(obs, env.t) if getattr(policy, "needs_time", False) else policy(obs)
        stood = standing(w.float(), obs[:, :w.shape[1]] if stood is None else stood)
        steps["weights"].append(stood[:, :-1].double())
        obs, _, _, info = env.step(w)
        steps["equity"].append(info["equity_bars"])
        for key in ("fees", "turnover", "stops"):
            steps[key].append(info[key])
    table = {key: torch.stack(v).cpu().numpy() for key, v in steps.items()}  # [steps, R, ...]
    close = markets[0].close.cpu().numpy()
    results = []
    for r, (start, n) in enumerate(zip(starts, lengths)):
        equity = np.concatenate([[s.initial_cash], table["equity"][:n, r].reshape(-1)])
        prices = close[start:start + n * k + 1]
        bench = s.initial_cash * (1 - s.fee) * (prices / prices[0]).mean(axis=1)
        bench[0] = s.initial_cash
        results.append(BacktestResult(
            equity, equity[1:] / equity[:-1] - 1, float(table["fees"][:n, r].sum()),
            float(table["turnover"][:n, r].sum()) / float(np.mean(equity)),
            int(table["stops"][:n, r].sum()), bench, table["weights"][:n, r]))
    return results
