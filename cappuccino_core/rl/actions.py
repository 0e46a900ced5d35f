"""Action spaces: how a policy's output becomes the portfolio's target weights.

Three spaces, recorded in a model's spec (`EnvSettings.action_space`):

- `weights`: A+1 outputs, their softmax is the target (assets then cash). Every action trades
  unless `min_rebalance_weight` skips it.
- `exposure`: one output, its sigmoid `e` is the share of the investable equity (what the cash
  reserve leaves) held in the equal-weight basket, the rest in cash. A change of the invested
  share smaller than `dead_zone` holds everything: no order at all.
- `relative`: A outputs, each squashed by tanh to a tilt `a` in [-1, 1] from equal weight: the
  asset's target is (1 + a) / A of the investable equity. `|a| <= dead_zone` holds the asset:
  no order for it, whatever its weight has drifted to (a tilt up is paid from cash: held
  assets are not sold for it). Action 0 is "stay in the basket", and costs nothing once
  there: an asset not held (the start, or a stop's exit once its re-entry cooldown is over)
  is bought at equal weight, as holding under the same rules buys it; one held is left alone.

A held asset's target is NaN (`HOLD`): the environment's and the trader's rebalance send no
order for it. The dead zone applies to sampled actions in training as to the mean in trading,
so exploration inside the dead zone costs no fees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a spec names its space without torch (artifacts/model.py)
    import torch

SPACES = ("weights", "exposure", "relative")
HOLD = float("nan")  # a target weight meaning "no order for this asset"


def n_outputs(space: str, n_assets: int) -> int:
    """The policy network's outputs in `space`."""
    if space == "weights":
        return n_assets + 1
    if space == "exposure":
        return 1
    if space == "relative":
        return n_assets
    raise ValueError(f"unknown action space {space!r}; one of {', '.join(SPACES)}")


def to_targets(space: str, action: torch.Tensor, portfolio: torch.Tensor, n_assets: int,
               dead_zone: float, cash_reserve: float) -> torch.Tensor:
    """Target weights `[..., A+1]` (assets then cash; NaN: hold the asset) from a policy's
    `action [..., n_outputs]` and the `portfolio` columns of its observation (env.py: the
    current weights `[..., A+1]`, then the assets' re-entry cooldowns)."""
    import torch

    current = portfolio[..., :n_assets + 1]
    room = 1.0 - cash_reserve
    if space == "weights":
        return torch.softmax(action, -1)
    if space == "exposure":
        e = torch.sigmoid(action[..., :1]) * room
        invested = 1.0 - current[..., -1:]
        assets = (e / n_assets).expand(*e.shape[:-1], n_assets)
        target = torch.cat([assets, 1.0 - e], -1)
        held = (e - invested).abs() <= dead_zone
        return torch.where(held, torch.full_like(target, HOLD), target)
    if space == "relative":
        tilt = torch.tanh(action)
        assets = room * (1.0 + tilt) / n_assets
        cooling = portfolio[..., n_assets + 1:2 * n_assets + 1] > 0
        enter = (current[..., :-1] <= 0) & ~cooling  # not held: action 0 buys it back
        stay = torch.where(enter, torch.full_like(assets, room / n_assets),
                           torch.full_like(assets, HOLD))
        assets = torch.where(tilt.abs() <= dead_zone, stay, assets)
        cash = 1.0 - torch.where(assets.isnan(), current[..., :-1], assets).sum(-1, keepdim=True)
        return torch.cat([assets, cash], -1)
    raise ValueError(f"unknown action space {space!r}; one of {', '.join(SPACES)}")


def standing(target: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """The allocation a policy stands by: its target, and for held assets what it stood by
    before (`before [..., A+1]`). A policy that always holds stands still: near-constant."""
    import torch

    return torch.where(target.isnan(), before, target)
