"""The environment's arithmetic: hand-computed cases, caps, conservation, batching, stops."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from cappuccino_core.data.bars import Bars
from cappuccino_core.data.features import WARMUP
from cappuccino_core.data.synthetic import synthetic_market
from cappuccino_core.rl.backtest import run_backtest
from cappuccino_core.rl.env import (BatchedTradingEnv, EnvSettings, Market, Normalisation,
                                 apply_stops, rebalance)

T = torch.tensor
NO_CAPS = EnvSettings(max_position_pct=1.0, min_cash_reserve_pct=0.0, trailing_stop_pct=None,
                      min_order_notional=0.0, slippage_bps=0.0)


def bars_from_prices(opens, highs, lows, closes) -> Bars:
    """A market whose bars after the warm-up are exactly the given ones (one asset per column)."""
    rows = [np.atleast_2d(np.asarray(x, dtype=float).T).T for x in (opens, highs, lows, closes)]
    n, a = rows[0].shape
    pad = np.repeat(rows[0][:1], WARMUP, axis=0)
    o, h, l, c = (np.vstack([pad, r]) for r in rows)
    ohlcv = np.stack([o, h, l, c, np.ones_like(o)], axis=-1)
    idx = pd.date_range("2024-01-01", periods=len(o), freq="h", tz="UTC")
    return Bars(tuple(f"A{i}/USD" for i in range(a)), idx, ohlcv, np.zeros(o.shape, dtype=bool))


def market_of(bars: Bars) -> Market:
    feats = np.zeros((len(bars), len(bars.symbols), 16))
    norm = Normalisation(np.zeros((len(bars.symbols), 16)), np.ones((len(bars.symbols), 16)))
    return Market.from_bars(bars, norm, features=feats)


def single_env(bars, settings, n=1):
    s = dataclasses.replace(settings, lookback=1, episode_bars=len(bars) - WARMUP - 1)
    env = BatchedTradingEnv(market_of(bars), [(WARMUP, len(bars))], n, s, fixed_start=True)
    env.reset()
    return env


def test_hand_computed_buy_fee_and_next_open_fill():
    # decision at bar 0 (close 100); fill at bar 1's open 100.5; bar 1 closes at 110
    bars = bars_from_prices([100, 100.5, 110], [100, 111, 111], [100, 100, 109], [100, 110, 110])
    env = single_env(bars, dataclasses.replace(NO_CAPS, fee=0.0025))
    _, reward, _, info = env.step(T([[0.5, 0.5]]))
    # 50,000 of notional ordered at 100.5; the 0.25% fee is taken from the units received
    units = 50_000 / 100.5 * (1 - 0.0025)
    cash = 100_000 - 50_000
    assert float(env.units[0, 0]) == pytest.approx(units, rel=1e-12)
    assert float(env.cash[0]) == pytest.approx(cash, rel=1e-12)
    assert float(info["fees"][0]) == pytest.approx(125.0, rel=1e-12)
    assert float(info["equity"][0]) == pytest.approx(cash + units * 110, rel=1e-12)
    assert float(reward[0]) == pytest.approx(np.log((cash + units * 110) / 100_000), rel=1e-6)


def test_slippage_is_paid_on_both_sides():
    s = dataclasses.replace(NO_CAPS, fee=0.001, slippage_bps=10)
    units, cash, fees, traded, fill = rebalance(T([[0.0]], dtype=torch.float64), T([1000.0]),
                                                T([[1.0]]), T([[10.0]], dtype=torch.float64), s)
    # everything buyable: value v with v * 1.001 (slippage) = 1000; the fee comes out of
    # the units received
    v = 1000 / 1.001
    assert float(units[0, 0]) == pytest.approx(v / 10 * 0.999, rel=1e-12)
    assert float(cash[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(fill[0, 0]) == pytest.approx(10.01)
    units2, cash2, *_ = rebalance(units, cash, T([[0.0]]), T([[10.0]], dtype=torch.float64), s)
    assert float(units2[0, 0]) == 0.0
    assert float(cash2[0]) == pytest.approx(float(units[0, 0]) * 9.99 * 0.999, rel=1e-12)


def _one_position(price, trail=0.10, stop_loss=None):
    s = EnvSettings(trailing_stop_pct=trail, stop_loss_pct=stop_loss, fee=0.0025, slippage_bps=0.0)
    units = T([[1234.5678 / price]], dtype=torch.float64)
    return s, units


@pytest.mark.parametrize("bar, exit_price", [
    ((115, 116, 107, 110), 108.0),   # low reaches peak 120 x 0.9 = 108: exit at the level
    ((100, 101, 95, 96), 100.0),     # opens below the level: exit at the open
    ((119, 130, 118, 116), 117.0),   # new peak 130 -> level 117; close 116 crossed it
    ((119, 125, 113, 120), None),    # level 108 then 112.5: never reached
])
def test_trailing_stop_cases(bar, exit_price):
    s, units = _one_position(100.0)
    o, h, lo, c = (T([[float(x)]], dtype=torch.float64) for x in bar)
    peak, entry = T([[120.0]], dtype=torch.float64), T([[100.0]], dtype=torch.float64)
    u, cash, new_peak, _, fees, notional, hit, px = apply_stops(units, T([0.0], dtype=torch.float64),
                                                                peak, entry, o, h, lo, c, s)
    if exit_price is None:
        assert not bool(hit[0, 0]) and float(u[0, 0]) == float(units[0, 0])
        assert float(new_peak[0, 0]) == 125.0
    else:
        assert bool(hit[0, 0]) and float(u[0, 0]) == 0.0
        assert float(px[0, 0]) == pytest.approx(exit_price)
        gross = float(units[0, 0]) * exit_price
        assert float(cash[0]) == pytest.approx(gross * (1 - 0.0025), rel=1e-12)
        assert float(fees[0]) == pytest.approx(gross * 0.0025, rel=1e-12)


@pytest.mark.parametrize("bar, exit_price, peak_after", [
    ((115, 116, 107, 110), None, 120.0),   # the low crossed 108, the close did not: held
    ((100, 101, 95, 96), 96.0, None),      # closed below 108: out at the close, not the open
    ((119, 130, 118, 125), None, 125.0),   # the peak is the highest close, not the high
])
def test_a_stop_checked_at_the_close_looks_at_the_close_only(bar, exit_price, peak_after):
    """`stop_check: close` (issue 26): the level from the highest close since entry; only a
    close at or below it exits, at that close."""
    s, units = _one_position(100.0)
    s = dataclasses.replace(s, stop_check="close")
    o, h, lo, c = (T([[float(x)]], dtype=torch.float64) for x in bar)
    u, cash, new_peak, *_, hit, px = apply_stops(units, T([0.0], dtype=torch.float64),
                                                 T([[120.0]], dtype=torch.float64),
                                                 T([[100.0]], dtype=torch.float64), o, h, lo, c, s)
    if exit_price is None:
        assert not bool(hit[0, 0]) and float(new_peak[0, 0]) == peak_after
    else:
        assert bool(hit[0, 0]) and float(u[0, 0]) == 0.0
        assert float(px[0, 0]) == pytest.approx(exit_price)


def test_stop_loss_from_entry():
    s, units = _one_position(100.0, trail=None, stop_loss=0.05)
    bar = [T([[x]], dtype=torch.float64) for x in (99.0, 99.5, 94.0, 96.0)]
    u, cash, *_, hit, px = apply_stops(units, T([0.0], dtype=torch.float64),
                                       T([[100.0]], dtype=torch.float64),
                                       T([[100.0]], dtype=torch.float64), *bar, s)
    assert bool(hit[0, 0]) and float(px[0, 0]) == pytest.approx(95.0) and float(u[0, 0]) == 0


@pytest.mark.parametrize("price", [0.05, 0.3, 7.0, 180.0, 2500.0, 31_000.0, 100_000.0])
def test_every_exit_sells_the_whole_position(price):
    # buy at `price`, rise 20%, then gap down 15% from the peak: the trailing stop exits all
    p = price
    bars = bars_from_prices([p, p, p * 1.2, p * 1.02], [p, p * 1.2, p * 1.2, p * 1.02],
                            [p, p, p * 1.15, p * 1.01], [p, p * 1.2, p * 1.17, p * 1.02])
    env = single_env(bars, EnvSettings(fee=0.0025, trailing_stop_pct=0.10, slippage_bps=0.0))
    w = T([[0.3, 0.7]])
    env.step(w)
    held = float(env.units[0, 0])
    assert held == pytest.approx(30_000 / p * (1 - 0.0025), rel=1e-9)  # cap 0.3, fee in units
    _, _, _, info = env.step(w)
    assert int(info["stops"][0]) == 0
    _, _, _, info = env.step(w)
    assert int(info["stops"][0]) == 1
    assert float(env.units[0, 0]) == 0.0  # exactly nothing left, at any price level
    # the last bar opens at 1.02 p, below the level 1.2 p x 0.9: out at the open
    assert float(info["exit_price"][0, 0]) == pytest.approx(p * 1.02, rel=1e-12)
    assert float(env.peak[0, 0]) == 0.0 and float(env.entry[0, 0]) == 0.0


@pytest.fixture(scope="module")
def synth_market():
    bars = synthetic_market(n_assets=3, n_bars=1500, seed=5)
    from cappuccino_core.data.features import compute_features
    feats = compute_features(bars, "v1")
    norm = Normalisation.fit(feats, np.arange(WARMUP, 1000))
    return Market.from_bars(bars, norm, features=feats)


def test_caps_hold_under_extreme_actions(synth_market):
    s = EnvSettings(max_position_pct=0.25, min_cash_reserve_pct=0.1, slippage_bps=5)
    env = BatchedTradingEnv(synth_market, [(WARMUP, 1500)], 256, s, seed=1)
    env.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(60):
        raw = torch.rand(256, 4, generator=gen) ** 8 * 1e6  # spiky: all-in on one asset
        t, eq_close = env.t.clone(), env.equity()
        _, _, _, info = env.step(raw / raw.sum(-1, keepdim=True))
        # Caps are fractions of the equity at the fill price just before the orders; a trim
        # smaller than min_order_notional (10 USD) may be skipped.
        o = synth_market.open[t + 1]
        eq_open = eq_close + (info["units_before"] * (o - synth_market.close[t])).sum(-1)
        value = info["units_after_orders"] * o
        slack = s.min_order_notional + 1e-9
        assert (value <= 0.25 * eq_open.unsqueeze(-1) + slack).all()
        assert (value.sum(-1) <= 0.9 * eq_open + 3 * slack).all()
        assert (env.cash >= -1e-6).all() and (env.units >= 0).all()
        assert torch.isfinite(env.equity()).all()


def test_value_is_conserved(synth_market):
    """equity change = holdings x price moves - fees - slippage, to 1e-9."""
    s = EnvSettings(slippage_bps=0.0, trailing_stop_pct=0.03, stop_loss_pct=0.02)
    env = BatchedTradingEnv(synth_market, [(WARMUP, 1500)], 64, s, seed=2)
    env.reset()
    gen = torch.Generator().manual_seed(1)
    stops = 0
    for _ in range(100):
        t = env.t.clone()
        eq_before = env.equity()
        w = torch.softmax(torch.randn(64, 4, generator=gen) * 3, -1)
        _, _, done, info = env.step(w)
        m = synth_market
        o, c, c0 = m.open[t + 1], m.close[t + 1], m.close[t]
        u0, u1, hit = info["units_before"], info["units_after_orders"], info["stopped"]
        moves = (u0 * (o - c0)).sum(-1)  # from the last close to the fill at the open
        held_to = torch.where(hit, info["exit_price"], c)
        moves = moves + (u1 * (held_to - o)).sum(-1)
        change = info["equity"] - eq_before
        err = (change - (moves - info["fees"])).abs() / eq_before
        assert float(err.max()) < 1e-9
        stops += int(info["stops"].sum())
    assert stops > 10  # the stop path was exercised


def test_batch_equals_single_runs(synth_market):
    s = EnvSettings(episode_bars=80, lookback=3, slippage_bps=3)
    gen = torch.Generator().manual_seed(3)
    actions = torch.softmax(torch.randn(80, 5, 4, generator=gen) * 2, -1)
    batch = BatchedTradingEnv(synth_market, [(600, 1500)], 5, s, fixed_start=True)
    obs_b = [batch.reset()]
    rewards_b = []
    for k in range(80):
        o, r, _, _ = batch.step(actions[k])
        obs_b.append(o)
        rewards_b.append(r)
    for i in range(5):
        single = BatchedTradingEnv(synth_market, [(600, 1500)], 1, s, fixed_start=True)
        obs = [single.reset()]
        for k in range(80):
            o, r, _, _ = single.step(actions[k, i:i + 1])
            obs.append(o)
            assert float(r[0]) == float(rewards_b[k][i])
        for k in range(80):
            assert torch.equal(obs[k][0], obs_b[k][i])


def test_the_compiled_step_equals_the_eager_one(synth_market):
    """Training compiles the step (fused loops, other SIMD widths): same arithmetic, same
    episode restarts, to rounding."""
    s = EnvSettings(episode_bars=30, lookback=2, slippage_bps=3, stop_loss_pct=0.05)
    segs = [(WARMUP + 10, 700), (900, 1400)]
    eager = BatchedTradingEnv(synth_market, segs, 64, s, seed=5)
    compiled = BatchedTradingEnv(synth_market, segs, 64, s, seed=5, compile=True)
    gen = torch.Generator().manual_seed(5)
    restarts = 0
    for _ in range(70):
        w = torch.softmax(torch.randn(64, 4, generator=gen) * 3, -1)
        o1, r1, d1, _ = eager.step(w, with_info=False)
        o2, r2, d2, _ = compiled.step(w, with_info=False)
        assert torch.equal(d1, d2) and torch.equal(eager.t, compiled.t)
        torch.testing.assert_close(r2, r1, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-7)
        for a, b in ((eager.units, compiled.units), (eager.cash, compiled.cash),
                     (eager.peak, compiled.peak), (eager.entry, compiled.entry)):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)
        restarts += int(d1.sum())
    assert restarts > 64  # every episode restarted at least once on the way


def test_a_new_seed_reuses_the_compiled_step(synth_market):
    """Training builds an env per split and seed: none of them may recompile the step (past
    torch's recompile limit the step would silently run eager, ~5x slower)."""
    torch.compiler.reset()
    s = EnvSettings(episode_bars=30, lookback=2)
    w = torch.softmax(torch.ones(16, 4), -1)
    segs = [(WARMUP + 10, 1400)]
    BatchedTradingEnv(synth_market, segs, 16, s, seed=1, compile=True).step(w, with_info=False)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for seed in (2, 3):
            BatchedTradingEnv(synth_market, segs, 16, s, seed=seed, compile=True).step(
                w, with_info=False)


def test_segments_are_never_glued(synth_market):
    s = EnvSettings(episode_bars=1000, lookback=2)
    segs = [(WARMUP + 10, 700), (900, 1100)]
    env = BatchedTradingEnv(synth_market, segs, 128, s, seed=4)
    env.reset()
    for _ in range(400):
        t_before = env.t.clone()
        _, _, done, _ = env.step(torch.full((128, 4), 0.25))
        stepped = ~done
        inside = ((t_before >= segs[0][0]) & (env.t < segs[0][1])) | \
                 ((t_before >= segs[1][0]) & (env.t < segs[1][1]))
        assert bool(inside[stepped].all())
        in_a = (env.t >= segs[0][0]) & (env.t < segs[0][1])
        in_b = (env.t >= segs[1][0]) & (env.t < segs[1][1])
        assert bool((in_a | in_b).all())


def test_a_stopped_asset_is_not_bought_again_until_its_cooldown_has_passed():
    """Buy, then a 15% gap down trips the 10% trailing stop; the policy keeps asking for the
    asset: it is not bought for `reentry_cooldown_bars` decisions, and the observation says
    how much of the wait is left."""
    n = 12
    prices = [100.0, 100.0, 85.0] + [86.0] * n
    bars = bars_from_prices(prices, prices, prices, prices)
    s = EnvSettings(fee=0.0, slippage_bps=0.0, max_position_pct=1.0, min_cash_reserve_pct=0.0,
                    trailing_stop_pct=0.10, reentry_cooldown_bars=3, min_order_notional=0.0)
    env = single_env(bars, s)
    all_in = T([[1.0, 0.0]])
    held, seen = [], []
    for _ in range(7):
        obs, _, _, info = env.step(all_in)
        held.append(float(env.units[0, 0]) > 0)
        seen.append(round(float(obs[0, 2]), 3))  # weights (asset, cash), then the cooldown
    # bought at 100; the bar opening at 85 exits it; three decisions wait; the fourth buys
    assert held == [True, False, False, False, False, True, True]
    assert seen == [0.0, 1.0, 0.667, 0.333, 0.0, 0.0, 0.0]
    env0 = single_env(bars, dataclasses.replace(s, reentry_cooldown_bars=0))
    again = [float(env0.step(all_in)[3]["units_after_orders"][0, 0]) > 0 for _ in range(3)]
    assert again == [True, True, True]  # without the rule: re-bought at the next open


def test_the_observation_shows_each_assets_room_to_its_stop():
    """Bought at 100, the price rises to 110 (the peak), then falls to 104.5: with a 10%
    trailing stop (level 99 from a 110 peak) the room is (104.5 - 99) / 104.5 / 0.10; at the
    peak it is 1 - (110 - 99) / 110 / 0.10 = 1.0; an asset not held shows 1, and so does
    every asset when no stop is configured."""
    prices = [100.0, 100.0, 110.0, 104.5, 104.5]
    bars = bars_from_prices(prices, prices, prices, prices)
    s = EnvSettings(fee=0.0, slippage_bps=0.0, max_position_pct=1.0, min_cash_reserve_pct=0.0,
                    trailing_stop_pct=0.10, min_order_notional=0.0)
    env = single_env(bars, s)
    assert float(env.observe()[0, 3]) == 1.0  # not held yet: weights (asset, cash), cooldown, room
    rooms = [float(env.step(T([[1.0, 0.0]]))[0][0, 3]) for _ in range(3)]
    assert rooms == pytest.approx([1.0, 1.0, (104.5 - 99.0) / 104.5 / 0.10], abs=1e-6)
    env = single_env(bars, dataclasses.replace(s, trailing_stop_pct=None))
    rooms = [float(env.step(T([[1.0, 0.0]]))[0][0, 3]) for _ in range(3)]
    assert rooms == [1.0, 1.0, 1.0]


def test_a_cadence_of_k_decides_once_every_k_bars_and_checks_stops_every_bar():
    """decision_bars 4: the policy is asked once per 4 bars, equity is recorded every bar,
    and a 15% fall in the third bar after a decision exits at once (not at the next
    decision); the cooldown counts bars."""
    n = 41
    prices = [100.0] * 7 + [85.0] * (n - 7)
    bars = bars_from_prices(prices, prices, prices, prices)
    s = EnvSettings(fee=0.0, slippage_bps=0.0, max_position_pct=1.0, min_cash_reserve_pct=0.0,
                    trailing_stop_pct=0.10, reentry_cooldown_bars=6, min_order_notional=0.0,
                    decision_bars=4, lookback=1)
    asked, held_at_decision = [], []

    def all_in(obs):
        asked.append(1)
        held_at_decision.append(float(obs[0, 0]))
        return T([[1.0, 0.0]])
    market = market_of(bars)
    result = run_backtest(all_in, market, WARMUP, WARMUP + n, s)
    assert len(asked) == (n - 1) // 4 == 10
    assert len(result.equity) == 10 * 4 + 1  # every bar
    assert result.stops == 1
    # bought at bar 1's open (100); bars 1..6 at 100; bar 7 opens at 85: out at its open
    eq = result.equity
    assert eq[6] == pytest.approx(100_000) and eq[7] == pytest.approx(85_000)
    # decisions at bars 4 (held), 8 and 12 (out, cooling down 6 bars from bar 7: 5, then 1
    # left), 16 (buys again), 20 (held)
    assert held_at_decision[:6] == pytest.approx([0.0, 1.0, 0.0, 0.0, 0.0, 1.0], abs=1e-9)


def test_a_volatility_scaled_trailing_stop_exits_atr_multiples_under_the_peak():
    """Bars of range 2 around 100 (average true range 2): with `trailing_stop_atr` 3 the level
    is the peak (high 101) less 6; a bar reaching 95.5 stays (and widens the range: 2.25), one
    reaching 94.0 exits at 101 - 3 x 2.25 = 94.25."""
    n = 30
    opens = [100.0] * n
    highs = [101.0] * n
    lows = [99.0] * 20 + [95.5] + [99.0] * 3 + [94.0] + [99.0] * 5
    s = EnvSettings(fee=0.0, slippage_bps=0.0, max_position_pct=1.0, min_cash_reserve_pct=0.0,
                    trailing_stop_pct=None, trailing_stop_atr=3.0, min_order_notional=0.0)
    s = dataclasses.replace(s, lookback=1, episode_bars=n - 16)
    start = WARMUP + 15  # the average true range has its 14 bars
    env = BatchedTradingEnv(market_of(bars_from_prices(opens, highs, lows, opens)),
                            [(start, WARMUP + n)], 1, s, fixed_start=True)
    env.reset()
    stops, exits = [], []
    for _ in range(12):
        info = env.step(T([[1.0, 0.0]]))[3]
        stops.append(int(info["stops"][0]))
        exits.append(float(info["exit_price"][0, 0]))
    assert stops.index(1) == 8 and sum(stops) == 1  # bar 24, lived by the ninth step
    assert exits[8] == pytest.approx(94.25)
