"""What an environment is configured with: its risk rules, costs and episode shape
(`EnvSettings`), and the observation normalisation a model was trained with (`Normalisation`).

Plain data, no torch: a model's spec (artifacts.py) holds both, and commands that only read
specs (`status`, `ensemble show`) should not pay for importing torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..common.config import BrokerConfig, RiskConfig

# The risk and cost defaults are the configuration's: one source, never a second copy here.
_RISK, _BROKER = RiskConfig(), BrokerConfig()


@dataclass(frozen=True)
class EnvSettings:
    fee: float = _BROKER.taker_fee
    slippage_bps: float = _BROKER.slippage_bps
    min_order_notional: float = _BROKER.min_order_notional
    max_position_pct: float = _RISK.max_position_pct
    min_cash_reserve_pct: float = _RISK.min_cash_reserve_pct
    trailing_stop_pct: float | None = _RISK.trailing_stop_pct
    stop_loss_pct: float | None = _RISK.stop_loss_pct
    reentry_cooldown_bars: int = _RISK.reentry_cooldown_bars
    stop_check: str = _RISK.stop_check
    # a volatility-scaled trailing stop: exit at the peak less this many average true ranges
    # (14 bars, as of the bar before). Measured in benchmarks/holding_rules.py only: not a
    # configuration setting (the trader does not apply it) unless it earns its place there.
    trailing_stop_atr: float | None = None
    min_rebalance_weight: float = 0.0
    initial_cash: float = _BROKER.initial_cash
    reward: str = "log_growth"
    action_space: str = "weights"  # rl/actions.py: weights | exposure | relative
    dead_zone: float = 0.1  # the smallest action that trades, in exposure and relative
    episode_bars: int = 720
    lookback: int = 4
    decision_bars: int = 1  # the policy decides every this many bars; stops check every bar

    @classmethod
    def from_config(cls, cfg, **overrides) -> "EnvSettings":
        """The live risk and fee settings from cappuccino.yaml; hyperparameters override the rest."""
        base = cls(fee=cfg.broker.taker_fee, slippage_bps=cfg.broker.slippage_bps,
                   min_order_notional=cfg.broker.min_order_notional,
                   max_position_pct=cfg.risk.max_position_pct,
                   min_cash_reserve_pct=cfg.risk.min_cash_reserve_pct,
                   trailing_stop_pct=cfg.risk.trailing_stop_pct,
                   stop_loss_pct=cfg.risk.stop_loss_pct,
                   reentry_cooldown_bars=cfg.risk.reentry_cooldown_bars,
                   stop_check=cfg.risk.stop_check,
                   decision_bars=cfg.data.decision_bars,
                   initial_cash=cfg.broker.initial_cash)
        return dataclasses.replace(base, **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)



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
