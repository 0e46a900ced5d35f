"""Turning target weights into orders, with the environment's arithmetic.

The plan is what `env.rebalance` would do to the broker's actual positions (caps, cash reserve,
minimum notional, no-trade band, fees and slippage, buys scaled to the cash), expressed as
market orders in each asset's own units, rounded down to the broker's increment. Selling to a
zero weight sells every unit held. Every order gets a deterministic client order id from what
it is for, so a restart in the middle of a bar re-derives the same ids and cannot trade twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal

import numpy as np
import pandas as pd
import torch

from ..broker.base import AssetRule, Position
from ..rl.env import EnvSettings, rebalance


@dataclass(frozen=True)
class PlannedOrder:
    symbol: str
    side: str
    qty: float
    purpose: str  # rebalance | stop
    skip: str | None = None  # why it is not sent (below the asset's minimum): journaled so

    def __post_init__(self):  # a plain float, whatever arithmetic produced it (numpy's scalars
        object.__setattr__(self, "qty", float(self.qty))  # must not reach a driver or an API)


def _sized(symbol: str, side: str, qty: float, purpose: str, rule: AssetRule) -> PlannedOrder:
    """The order, or the order marked skipped when the broker would refuse its size."""
    if qty < rule.min_order_size or qty <= 0:
        return PlannedOrder(symbol, side, qty, purpose,
                            skip=f"{qty:.10g} below {symbol}'s minimum order size "
                                 f"{rule.min_order_size:g}")
    return PlannedOrder(symbol, side, qty, purpose)


def client_order_id(trader: str, purpose: str, when: pd.Timestamp, symbol: str,
                    side: str) -> str:
    """`cap-<trader>-<purpose>-<YYYYmmddHHMM>-<BASE>-<side>`: the same inputs, the same id."""
    return f"cap-{trader}-{purpose}-{when:%Y%m%d%H%M}-{symbol.split('/')[0]}-{side}"


def dust(positions: dict[str, Position], prices: dict[str, float],
         rules: dict[str, AssetRule]) -> dict[str, float]:
    """{symbol: units} of the positions worth less than the venue's minimum order value: they
    cannot be sold, so no order is planned for them (it would be refused bar after bar)."""
    return {s: p.qty for s, p in positions.items()
            if s in rules and s in prices and p.qty * prices[s] < rules[s].min_notional}


def plan_rebalance(target_weights: np.ndarray, symbols: list[str],
                   positions: dict[str, Position], cash: float, prices: np.ndarray,
                   settings: EnvSettings, rules: dict[str, AssetRule],
                   no_buy: np.ndarray | None = None) -> list[PlannedOrder]:
    """Orders that move the holdings to `target_weights` (assets then cash); sells first;
    nothing bought of the assets in `no_buy` (cooling down after a stop). Orders the asset's
    minimum size refuses come back marked `skip`; dust (`dust`) is left where it is."""
    left = dust(positions, dict(zip(symbols, prices)), rules)
    units = np.array([positions[s].qty if s in positions and s not in left else 0.0
                      for s in symbols])
    t = lambda x: torch.as_tensor(np.asarray(x, dtype=float)[None])  # noqa: E731
    new_units, *_ = rebalance(t(units), torch.tensor([cash], dtype=torch.float64),
                              t(target_weights[:-1]), t(prices), settings,
                              None if no_buy is None else torch.as_tensor(no_buy)[None])
    new_units = new_units[0].numpy()
    sells, buys = [], []
    for a, symbol in enumerate(symbols):
        rule = rules[symbol]
        if not rule.tradable:
            continue
        delta = new_units[a] - units[a]
        if delta < 0:  # selling out sends the broker's exact quantity
            qty = units[a] if new_units[a] <= 0 else _round_down(-delta, rule)
            sells.append(_sized(symbol, "sell", qty, "rebalance", rule))
        elif delta > 0:  # the environment's position grows net of the fee taken from it
            qty = _round_down(delta / (1 - settings.fee), rule)
            buys.append(_sized(symbol, "buy", qty, "rebalance", rule))
    return sells + buys


def _round_down(qty: float, rule: AssetRule) -> float:
    """`qty` down to a whole number of the asset's increments, in decimal arithmetic, so that
    what is sent has no float noise (0.8317411010000001 is refused by Alpaca for too many
    decimals). A hair under a whole step (float error in the plan) counts as the step."""
    step = Decimal(repr(float(rule.min_trade_increment)))
    exact = Decimal(repr(float(qty))) / step
    steps = exact.to_integral_value(rounding=ROUND_FLOOR)
    if exact - steps > Decimal("0.999999"):
        steps += 1
    return float(steps * step)


def affordable(buys: list[PlannedOrder], cash: float, prices: dict[str, float],
               settings: EnvSettings, rules: dict[str, AssetRule]) -> list[PlannedOrder]:
    """The planned buys, scaled down (to each asset's increment) if with slippage they would
    cost more than `cash`, as `env.rebalance` scales them (a buy's fee is paid in the asset)."""
    slip = settings.slippage_bps * 1e-4
    cost = sum(o.qty * prices[o.symbol] for o in buys if not o.skip) * (1 + slip)
    if cost <= cash or cost <= 0:
        return buys
    scale = max(cash, 0.0) / cost
    return [o if o.skip else _sized(o.symbol, o.side, _round_down(o.qty * scale, rules[o.symbol]),
                                    o.purpose, rules[o.symbol]) for o in buys]
