"""Evaluating an ensemble or a trial over a window: the one sequence that `cappuccino backtest`,
the HTML report, replay and the auto-deployer share (policy -> window -> features -> backtest),
so they can never cover different bars or trade under different rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.engine import Engine

from ..common.config import Config
from ..data import load_bars
from ..data.bars import Bars
from ..data.features import compute_features
from ..rl.backtest import BacktestResult, backtest_ensemble, first_decision_bar
from ..rl.window import Window, held_out_start, held_out_window, resolve_window
from .manifest import current_dir, ensembles_dir
from .selection import SelectionError, member_by_id
from .serving import Ensemble


@dataclass
class MarketData:
    """The configured bars and their features, computed once for several evaluations."""
    bars: Bars
    features: np.ndarray

    @classmethod
    def load(cls, cfg: Config) -> "MarketData":
        bars = load_bars(cfg)
        return cls(bars, compute_features(bars, cfg.data.feature_set))


@dataclass
class Evaluation:
    window: Window
    results: list[BacktestResult]  # one per policy, in the order given


def published_ensemble(cfg: Config) -> Ensemble:
    """The published ensemble; SelectionError before the first publish."""
    path = current_dir(ensembles_dir(cfg))
    if path is None:
        raise SelectionError("no ensemble published yet (cappuccino ensemble sync)")
    return Ensemble.load(path, cfg)


def trial_alone(cfg: Config, engine: Engine, study: str, trial_id: int) -> Ensemble:
    """One COMPLETE, servable trial of `study` served alone; SelectionError says why not."""
    member, why = member_by_id(engine, cfg, study, trial_id)
    if member is None:
        raise SelectionError(why)
    return Ensemble.of_trial(member.artifact_dir, member.sha256, member.spec.study,
                             member.trial_id, member.number, member.value, cfg)


def window_for(engine: Engine, bars: Bars, policies: list[Ensemble], study: str | None,
               start=None, end=None, held_out_only: bool = False,
               decision_bars: int = 1) -> Window:
    """The window every policy can decide on: `start`/`end`, else the study's held-out window
    (which `held_out_only` requires: WindowError when the study has none); its first decision
    on a decision bar of the cadence."""
    first = max(first_decision_bar(p) for p in policies)
    if held_out_only:
        return held_out_window(engine, study, bars, first, decision_bars)
    return resolve_window(bars, start, end, first, held_out_start(engine, study), study,
                          decision_bars)


def evaluate(cfg: Config, engine: Engine, policies: list[Ensemble], study: str | None,
             start=None, end=None, market: MarketData | None = None,
             held_out_only: bool = False) -> Evaluation:
    """Backtest each policy over one window under the live risk rules (see `window_for`)."""
    market = market or MarketData.load(cfg)
    window = window_for(engine, market.bars, policies, study, start, end, held_out_only,
                        cfg.data.decision_bars)
    return Evaluation(window, [backtest_ensemble(cfg, p, market.bars, market.features,
                                                 window.lo, window.hi) for p in policies])
