"""Action spaces (rl/actions.py): holding is free where the space says so, in the environment,
the backtest, the trader's order plan and the ensemble alike."""

import math

import numpy as np
import pytest
import torch

from cappuccino_core.broker.base import AssetRule, Position
from cappuccino_core.data.features import WARMUP, compute_features
from cappuccino_core.data.synthetic import synthetic_market
from cappuccino_core.ensemble.serving import blend_targets
from cappuccino_core.rl.actions import SPACES, n_outputs
from cappuccino_core.rl.agent import ActorCritic, PPOConfig, targets, train_ppo
from cappuccino_core.rl.backtest import run_backtest
from cappuccino_core.rl.env import BatchedTradingEnv, EnvSettings, Market, Normalisation
from cappuccino_core.trading.orders import plan_rebalance

NO_STOP = dict(trailing_stop_pct=None, stop_loss_pct=None)


@pytest.fixture(scope="module")
def market():
    bars = synthetic_market(n_assets=3, n_bars=1500, seed=5)
    feats = compute_features(bars, "v1")
    return Market.from_bars(bars, Normalisation.fit(feats, np.arange(WARMUP, 1000)),
                            features=feats)


def test_each_space_has_its_outputs_and_an_unknown_one_is_refused():
    assert [n_outputs(s, 7) for s in SPACES] == [8, 1, 7]
    with pytest.raises(ValueError, match="unknown action space"):
        n_outputs("long_short", 7)


def act(space, action, obs, s):
    return targets(action, obs, s, n_assets=3)


def test_relative_action_zero_stays_in_the_basket_and_then_trades_nothing(market):
    """From cash, action 0 buys the equal-weight basket (as holding does); from then on it
    sends no order for a whole episode, whatever the weights drift to."""
    s = EnvSettings(action_space="relative", **NO_STOP)
    env = BatchedTradingEnv(market, [(WARMUP, 1500)], 8, s, seed=3)
    obs = env.reset()
    first = act("relative", torch.zeros(8, 3), obs, s)
    torch.testing.assert_close(first[:, :3], torch.full((8, 3), 0.95 / 3))
    obs, _, _, info = env.step(first)
    start_units = env.units.clone()
    assert bool((start_units > 0).all())
    for _ in range(100):
        target = act("relative", torch.zeros(8, 3), obs, s)
        assert bool(target[:, :3].isnan().all())
        obs, _, done, info = env.step(target)
        assert float(info["fees"].abs().max()) == 0.0 and float(info["turnover"].max()) == 0.0
        assert not bool(done.any())
    torch.testing.assert_close(env.units, start_units)


def test_relative_action_zero_buys_a_stopped_asset_back_after_its_cooldown_only(market):
    s = EnvSettings(action_space="relative")
    obs = torch.zeros(1, 10)
    obs[0, :4] = torch.tensor([0.0, 0.3, 0.3, 0.4])  # asset 0 exited by a stop
    obs[0, 4] = 0.5  # ... and still cooling down
    assert bool(act("relative", torch.zeros(1, 3), obs, s)[0, :3].isnan().all())
    obs[0, 4] = 0.0  # its cooldown is over
    target = act("relative", torch.zeros(1, 3), obs, s)
    assert float(target[0, 0]) == pytest.approx(0.95 / 3)
    assert bool(target[0, 1:3].isnan().all())


def test_a_relative_tilt_past_the_dead_zone_trades_that_asset_only(market):
    s = EnvSettings(action_space="relative", max_position_pct=1.0, **NO_STOP)
    env = BatchedTradingEnv(market, [(WARMUP, 1500)], 1, s, seed=3)
    obs, *_ = env.step(act("relative", torch.zeros(1, 3), env.reset(), s))  # into the basket
    before = env.units.clone()
    action = torch.tensor([[0.0, 2.0, -0.05]])  # hold, tilt up (tanh 0.96), inside the zone
    env.step(act("relative", action, obs, s))
    assert float(env.units[0, 0]) == float(before[0, 0])
    assert float(env.units[0, 2]) == float(before[0, 2])
    # bought with the cash reserve (held assets are not sold to pay for it)
    assert float(env.units[0, 1]) > float(before[0, 1]) * 1.1
    assert float(env.cash[0]) < 100.0


def test_exposure_holds_inside_the_dead_zone_and_trades_the_basket_outside(market):
    s = EnvSettings(action_space="exposure", max_position_pct=1.0, **NO_STOP)
    env = BatchedTradingEnv(market, [(WARMUP, 1500)], 1, s, seed=3)
    obs = env.reset()  # all cash: invested share 0
    small = act("exposure", torch.tensor([[-3.0]]), obs, s)  # sigmoid(-3) x 0.95 = 0.045 < 0.1
    obs, _, _, info = env.step(small)
    assert float(info["turnover"][0]) == 0.0 and float(env.units.sum()) == 0.0
    full = act("exposure", torch.tensor([[5.0]]), obs, s)
    obs, _, _, info = env.step(full)
    weights = obs[0, :3]
    assert float(weights.sum()) == pytest.approx(0.95 * 0.993, abs=0.02)
    assert float(weights.max() - weights.min()) < 0.01  # the equal-weight basket


def test_a_policy_that_always_holds_stands_still_in_the_backtest(market):
    """Near-constant detection reads the allocation a policy stands by: holding is flagged."""
    s = EnvSettings(action_space="relative", **NO_STOP)

    def hold(obs):
        return act("relative", torch.zeros(obs.shape[0], 3), obs, s)
    result = run_backtest(hold, market, 1000, 1400, s)
    assert float(result.weights.std(axis=0).max()) == 0.0
    assert result.turnover * np.mean(result.equity) == pytest.approx(
        0.90 * s.initial_cash, rel=0.01)  # the basket (3 x the 30% cap), bought once
    assert result.stops == 0
    assert result.equity[-1] != result.equity[0]  # it held the basket through the moves


def test_the_order_plan_sends_nothing_for_a_held_asset():
    s = EnvSettings(min_order_notional=1.0)
    rules = {sym: AssetRule(sym, 1e-9, 1e-9) for sym in ("A/USD", "B/USD")}
    positions = {"A/USD": Position("A/USD", 10.0, 100.0), "B/USD": Position("B/USD", 5.0, 100.0)}
    plan = plan_rebalance(np.array([math.nan, 0.0, 0.95]), ["A/USD", "B/USD"], positions,
                          500.0, np.array([120.0, 90.0]), s, rules)
    assert [(o.symbol, o.side) for o in plan] == [("B/USD", "sell")]


def test_an_ensemble_holds_an_asset_only_when_every_member_does():
    current = np.array([0.2, 0.3, 0.5])
    members = np.array([[math.nan, 0.1, 0.6], [math.nan, math.nan, 0.5]])
    target = blend_targets(np.array([0.5, 0.5]), members, current)
    assert math.isnan(target[0])
    assert target[1] == pytest.approx((0.1 + 0.3) / 2)
    assert target[2] == pytest.approx(0.55)


@pytest.mark.parametrize("space", ["exposure", "relative"])
def test_sampled_actions_in_the_dead_zone_pay_no_fees(market, space):
    """Exploration inside the dead zone is free: a policy whose noise stays inside it trains
    without a trade (its mean starts at 0: half invested, under 0.5 away from the all-cash
    start; or the basket, bought once per episode); without the dead zone the same training
    pays more."""
    def training_fees(dead_zone):
        s = EnvSettings(action_space=space, dead_zone=dead_zone, episode_bars=64, **NO_STOP)
        env = BatchedTradingEnv(market, [(WARMUP, 1000)], 4, s, seed=1)
        fees, original_step = [], env.step

        def step(weights, with_info=True, out=None):
            result = original_step(weights, with_info=True, out=out)
            fees.append(float(result[3]["fees"].sum()))
            return result
        env.step = step
        train_ppo(env, PPOConfig(total_timesteps=512, n_envs=4, n_steps=32, hidden=16,
                                 layers=1, init_log_std=-4.0), seed=0)
        return sum(fees)
    free, paid = training_fees(0.5), training_fees(0.0)
    if space == "exposure":
        assert free == 0.0 and paid > 0.0
    else:  # 4 updates x 32 steps of 4 envs in 64-bar episodes: 8 basket purchases of 90%
        # of 100,000 (three assets at the 30% cap) at 25 bps
        assert free == pytest.approx(8 * 0.90 * 100_000 * 0.0025, rel=0.01)
        assert paid > 1.2 * free  # noise around equal weight, traded every bar


@pytest.mark.parametrize("space", SPACES)
def test_an_agent_serves_through_its_space(space):
    s = EnvSettings(action_space=space)
    agent = ActorCritic(10, n_outputs(space, 3), 8, 1, -0.5, settings=s, n_assets=3)
    obs = torch.zeros(2, 10)
    obs[:, :4] = torch.tensor([0.95 / 3] * 3 + [0.05])  # in the basket
    w = agent.weights(obs)
    assert w.shape == (2, 4)
    if space == "relative":  # an untrained mean is ~0: stay as it is
        assert bool(w[:, :3].isnan().all())
    else:
        assert bool(torch.isfinite(w).all()) and float(w.sum(-1).max()) == pytest.approx(1.0)
