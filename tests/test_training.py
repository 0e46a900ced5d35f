"""Training: CV splits, the search space, learning on a planted signal, a full trial."""

import dataclasses
import math
import time
from typing import Callable

import numpy as np
import optuna
import pytest
import torch

from cappuccino_core.rl.agent import (ActorCritic, PPOConfig, SplitPolicy, StackedActorCritic,
                                   StackedAdam, clip_grad_norms, gradient_steps, train_ppo,
                                   train_ppo_splits)
from cappuccino_core.rl.backtest import run_backtest, run_backtests
from cappuccino_core.common.config import TrainingConfig, load_config
from cappuccino_core.data.features import WARMUP, compute_features
from cappuccino_core.data.synthetic import synthetic_market
from cappuccino_core.rl.env import (BatchedTradingEnv, EnvSettings, Market, Normalisation,
                                   portfolio_columns)
from cappuccino_core.artifacts.model import load_artifact
from cappuccino_core.training.cv import cpcv_splits, walk_forward_splits
from cappuccino_core.artifacts.store import TrialArtifacts
from cappuccino_core.storage.database import app_engine
from cappuccino_core.training import objective as objective_module
from cappuccino_core.training.objective import (HeldOutError, Objective, new_train_end,
                                                native_bfloat16, prepare_data,
                                                training_precision)
from cappuccino_core.training.search_space import (ENV_PARAMS, MIN_GRADIENT_STEPS, PPO_PARAMS,
                                                   default_params, sample_params, split_params)
from cappuccino_core.training.worker import WorkerHooks, open_study, run_worker, set_target

from conftest import write_config
from ensemble_helpers import local_model


def random_policy(n_actions: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A baseline: random Dirichlet(1) weights every bar."""
    rng = np.random.default_rng(seed)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        w = rng.dirichlet(np.ones(n_actions), size=obs.shape[0])
        return torch.as_tensor(w, dtype=torch.float32, device=obs.device)
    return policy


def test_cpcv_splits_purge_and_embargo():
    splits = cpcv_splits(0, 6000, n_groups=6, k_test=2, embargo=48, purge=1)
    assert len(splits) == math.comb(6, 2)
    tested = np.zeros(6000, dtype=int)
    for s in splits:
        for lo, hi in s.test:
            tested[lo:hi] += 1
            for a, b in s.train:
                assert b <= lo - 1 or a >= hi + 48  # purge before, embargo after
        assert sum(b - a for a, b in s.train) >= 6000 * 4 / 6 - 3 * 49
    assert (tested == 5).all()  # every bar is tested in C(5,1) = 5 splits


def test_walk_forward_trains_only_on_the_past():
    for s in walk_forward_splits(100, 1300, n_groups=4):
        assert max(b for _, b in s.train) < s.test[0][0]
        assert s.train[0][0] == 100


@pytest.fixture(scope="module")
def tiny_market():
    bars = synthetic_market(n_assets=3, n_bars=1200, seed=11)
    feats = compute_features(bars, "v1")
    return Market.from_bars(bars, Normalisation.fit(feats, np.arange(WARMUP, 1000)),
                            features=feats)


def _tiny_outcome(market, params):
    ppo, env = split_params(params, EnvSettings(min_order_notional=1.0), 4 * 16 * 8, 8)
    benv = BatchedTradingEnv(market, [(WARMUP, 1000)], ppo.n_envs, env, seed=0)
    agent = train_ppo(benv, ppo, seed=0)
    res = run_backtest(agent.weights, market, 1000, 1200, env)
    return agent, res.equity


def test_target_kl_ends_an_updates_epochs_early(tiny_market):
    """CleanRL's early stop: with a target no update can stay under, every update runs one
    epoch; without one, all of them. The diagnostics come with every update."""
    market = tiny_market
    seen = {}
    for target in (None, 1e-6):
        ppo = PPOConfig(total_timesteps=3 * 8 * 16, n_envs=8, n_steps=16, update_epochs=4,
                        learning_rate=1e-2, target_kl=target)
        benv = BatchedTradingEnv(market, [(WARMUP, 1000)], ppo.n_envs,
                                 EnvSettings(min_order_notional=1.0), seed=0)
        stats = []
        train_ppo(benv, ppo, seed=0, on_update=stats.append)
        seen[target] = [st.epochs for st in stats]
        assert all(st.approx_kl >= 0 and 0 <= st.clip_fraction <= 1 for st in stats)
        assert all(math.isfinite(st.explained_variance) for st in stats)
    assert seen[None] == [4, 4, 4] and seen[1e-6] == [1, 1, 1]


CHANGES = {
    "learning_rate": 3e-3, "anneal_lr": False, "gamma": 0.5, "gae_lambda": 0.5,
    "clip_coef": 0.01, "ent_coef": 0.5, "vf_coef": 5.0, "max_grad_norm": 0.001,
    "update_epochs": 1, "num_minibatches": 2, "n_steps": 32, "hidden": 16, "layers": 1,
    "init_log_std": 0.5, "lookback": 2, "episode_bars": 20, "min_rebalance_weight": 0.15,
    "reward": "excess", "init_cash_weight": 0.05, "action_space": "relative",
}


def test_the_search_space_is_covered_by_the_changes_below():
    study = optuna.create_study()
    sampled = sample_params(study.ask())
    assert set(sampled) == set(CHANGES) == PPO_PARAMS | ENV_PARAMS


def test_a_default_fit_makes_enough_gradient_steps_anywhere_in_the_search_space():
    """The smallest corner of the sampled rollout length, epochs and minibatches, at the
    default training budget, still makes MIN_GRADIENT_STEPS Adam steps."""
    training = TrainingConfig()
    trial = optuna.create_study().ask()
    sample_params(trial)
    d = trial.distributions
    corner = PPOConfig(total_timesteps=training.total_timesteps, n_envs=training.n_envs,
                       n_steps=max(d["n_steps"].choices),
                       update_epochs=d["update_epochs"].low,
                       num_minibatches=min(d["num_minibatches"].choices))
    assert gradient_steps(corner) >= MIN_GRADIENT_STEPS
    assert gradient_steps(PPOConfig(total_timesteps=200_000, n_envs=64, n_steps=128,
                                    update_epochs=2, num_minibatches=2)) < MIN_GRADIENT_STEPS


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_every_hyperparameter_changes_the_outcome(tiny_market, name):
    base = {**default_params(), "n_steps": 16, "hidden": 32}
    changed = {**base, name: CHANGES[name]}
    assert changed[name] != base[name]
    agent_a, eq_a = _tiny_outcome(tiny_market, base)
    agent_b, eq_b = _tiny_outcome(tiny_market, changed)
    sa, sb = agent_a.state_dict(), agent_b.state_dict()
    same_weights = sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)
    assert not same_weights or not np.array_equal(eq_a, eq_b), f"{name} changed nothing"


@pytest.fixture(scope="module")
def three_splits():
    """Three trainings as a trial has them: own segments (one of them in two pieces), own
    normalisation fitted on them, own seed; one price tensor."""
    bars = synthetic_market(n_assets=3, n_bars=1200, seed=5)
    feats = compute_features(bars, "v1")
    segments = [[(WARMUP, 700)], [(600, 1000)], [(WARMUP, 500), (750, 1000)]]
    markets = []
    for segs in segments:
        norm = Normalisation.fit(feats, np.concatenate([np.arange(lo, hi) for lo, hi in segs]))
        markets.append(Market.from_bars(bars, norm, features=feats,
                                        prices=markets[0] if markets else None))
    return markets, segments, [3, 4, 5]


def _parameters(agent) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in agent.parameters()])


# alone vs together: float32 differs by summation order only; bfloat16 by its rounding too
TOLERANCES = {"float32": {"weights": 1e-5, "kl": 1e-3, "reward": 1e-4, "sharpe": 1e-3,
                          "equity": 1e-5},
              # bfloat16's rounding moves a weight near a trade's edge: a 200-bar Sharpe
              # differed by 0.13 (2026-12-07, no trailing stop), its equity by < 1e-3
              "bfloat16": {"weights": 1e-2, "kl": 0.5, "reward": 1e-2, "sharpe": 0.2,
                           "equity": 1e-3}}


@pytest.mark.parametrize("target_kl, precision",
                         [(None, "float32"), (0.002, "float32"), (None, "bfloat16")])
def test_splits_trained_together_match_each_trained_alone(three_splits, target_kl, precision):
    """Batching a trial's trainings changes no split's training: same initial weights, action
    noise, episodes, minibatches, losses, clipping and Adam steps per split (with target_kl,
    splits stop their epochs at different times). Only summation order differs (a batched
    matmul against single ones): after 6 updates the weights agree to ~1e-7 (measured; 1e-5
    allowed), while a split trained in another split's place differs by ~0.75. With bfloat16
    hidden layers the kernels' blocking differs between a batch of one and of three, and its
    rounding (2^-8 relative) compounds: 1.1e-3 after 6 updates (measured; 1e-2 allowed)."""
    markets, segments, seeds = three_splits
    settings = EnvSettings(lookback=2, episode_bars=100, min_order_notional=1.0)
    ppo = PPOConfig(total_timesteps=8 * 16 * 6, n_envs=8, n_steps=16, update_epochs=3,
                    learning_rate=1e-3, target_kl=target_kl, precision=precision)
    alone, alone_stats = [], []
    for market, segs, seed in zip(markets, segments, seeds):
        stats = []
        env = BatchedTradingEnv(market, segs, ppo.n_envs, settings, seed=seed)
        alone.append(train_ppo(env, ppo, seed, on_update=stats.append))
        alone_stats.append(stats)
    together_stats = []
    env = BatchedTradingEnv.splits(markets, segments, ppo.n_envs, settings, seeds)
    together = train_ppo_splits(env, ppo, seeds, on_update=together_stats.append)
    tol = TOLERANCES[precision]

    for k in range(3):
        diff = (_parameters(alone[k]) - _parameters(together[k])).abs().max()
        assert diff < tol["weights"], f"split {k}: parameters differ by {diff}"
        assert [st[k].epochs for st in together_stats] == [st.epochs for st in alone_stats[k]]
        for st_alone, st_batch in zip(alone_stats[k], [st[k] for st in together_stats]):
            assert st_batch.approx_kl == pytest.approx(st_alone.approx_kl, rel=tol["kl"],
                                                       abs=1e-6)
            assert st_batch.mean_reward == pytest.approx(st_alone.mean_reward,
                                                         rel=tol["reward"], abs=1e-6)
        one = run_backtest(alone[k].weights, markets[k], 1000, 1200, settings)
        many = run_backtests(SplitPolicy(together, [k]), [markets[k]], [(1000, 1200)],
                             settings)[0]
        assert many.metrics()["sharpe"] == pytest.approx(one.metrics()["sharpe"],
                                                         abs=tol["sharpe"])
        assert many.equity[-1] == pytest.approx(one.equity[-1], rel=tol["equity"])
    assert (_parameters(together[0]) - _parameters(together[1])).abs().max() > 1e-2
    if target_kl is not None:  # the masked Adam was exercised: some epochs were cut short
        assert any(st.epochs < ppo.update_epochs for stats in alone_stats for st in stats)


def test_backtests_run_together_equal_each_run_alone(three_splits):
    """Rows of one batched backtest (different normalisations, ranges of different lengths)
    are exactly the single backtests."""
    markets, _, _ = three_splits
    settings = EnvSettings(lookback=2, min_order_notional=1.0)
    head = portfolio_columns(3)

    def policy(obs):  # deterministic, row by row, reads the features
        return torch.softmax(4 * obs[:, head:head + 4], -1)
    ranges = [(1000, 1200), (800, 950), (1000, 1100)]
    many = run_backtests(policy, markets, ranges, settings)
    for market, (lo, hi), res in zip(markets, ranges, many):
        one = run_backtest(policy, market, lo, hi, settings)
        assert len(res.equity) == len(one.equity) == hi - lo
        np.testing.assert_allclose(res.equity, one.equity, rtol=1e-12)
        np.testing.assert_allclose(res.weights, one.weights, rtol=1e-6)
        assert (res.fees, res.stops) == pytest.approx((one.fees, one.stops), rel=1e-9)
        assert res.turnover == pytest.approx(one.turnover, rel=1e-9)
    # the same bars through two normalisations: each row read its own market's features
    assert not np.allclose(many[0].weights[:99], many[2].weights[:99])


def test_a_split_policy_answers_each_row_with_its_agent(three_splits):
    markets, segments, seeds = three_splits
    ppo = PPOConfig(total_timesteps=8 * 16, n_envs=8, n_steps=16)
    env = BatchedTradingEnv.splits(markets, segments, 8, EnvSettings(lookback=2), seeds)
    agents = train_ppo_splits(env, ppo, seeds)
    obs = torch.randn(5, env.obs_size)
    rows = [2, 0, 2, 1, 0]
    got = SplitPolicy(agents, rows)(obs)
    for r, k in enumerate(rows):
        torch.testing.assert_close(got[r], agents[k].weights(obs[r:r + 1])[0], atol=1e-6,
                                   rtol=0)
    assert not torch.allclose(agents[0].weights(obs), agents[1].weights(obs), atol=1e-4)


def test_stacked_adam_and_clipping_are_torchs_per_split():
    """The flat per-split optimiser is torch's clip_grad_norm_ + Adam(eps=1e-5) for each
    split, and a split marked stopped (target_kl) keeps its weights."""
    torch.manual_seed(0)
    agents = [ActorCritic(6, 3, 8, 2, -0.5) for _ in range(2)]
    refs = [ActorCritic(6, 3, 8, 2, -0.5) for _ in range(2)]
    for ref, agent in zip(refs, agents):
        ref.load_state_dict(agent.state_dict())
    net = StackedActorCritic(agents)
    opt = StackedAdam(net.params)
    ref_opts = [torch.optim.Adam(r.parameters(), lr=1e-2, eps=1e-5) for r in refs]
    obs = torch.randn(2, 5, 6)
    for step in range(4):
        active = torch.tensor([True, step < 2])  # split 1 stops after two steps
        ((net.actor(obs) ** 2).sum() + net.value(obs).sum()).backward()
        clip_grad_norms(net.params, 0.5)
        opt.step(1e-2, active)
        for k in range(2):
            if not active[k]:
                continue
            ref = refs[k]
            ((ref.actor(obs[k]) ** 2).sum() + ref.value(obs[k]).sum()).backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
            ref_opts[k].step()
            ref_opts[k].zero_grad()
    for agent, ref in zip(net.unstack(agents), refs):
        torch.testing.assert_close(_parameters(agent), _parameters(ref), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(_parameters(agents[0]), _parameters(agents[1]), atol=1e-3)


def test_bfloat16_hidden_layers_keep_float32_outputs():
    torch.manual_seed(0)
    agent = ActorCritic(30, 5, 64, 2, -0.5)
    obs = torch.randn(1, 200, 30)
    exact = StackedActorCritic([agent]).actor(obs)
    low = StackedActorCritic([agent], "bfloat16").actor(obs)
    assert low.dtype == torch.float32
    assert 0 < (low - exact).abs().max() < 1e-2  # bfloat16 rounding, nothing worse


def test_precision_auto_is_bfloat16_on_a_cpu_that_has_it(monkeypatch):
    training = TrainingConfig()
    for native, device, expected in [(True, "cpu", "bfloat16"), (False, "cpu", "float32"),
                                     (True, "cuda", "float32")]:
        monkeypatch.setattr(objective_module, "native_bfloat16", lambda: native)
        assert training_precision(training, device) == expected
    explicit = dataclasses.replace(training, precision="float32")
    monkeypatch.setattr(objective_module, "native_bfloat16", lambda: True)
    assert training_precision(explicit, "cpu") == "float32"


def test_an_untrained_agent_starts_uniform_or_as_equal_weight_holding():
    obs = torch.randn(4, 10)
    uniform = ActorCritic(10, 8, 16, 2, -0.5).weights(obs)
    holding = ActorCritic(10, 8, 16, 2, -0.5, init_cash_weight=0.05).weights(obs)
    torch.testing.assert_close(uniform, torch.full_like(uniform, 1 / 8), atol=0.01, rtol=0)
    torch.testing.assert_close(holding[:, -1], torch.full((4,), 0.05), atol=0.005, rtol=0)
    torch.testing.assert_close(holding[:, :-1], torch.full((4, 7), 0.95 / 7), atol=0.01, rtol=0)


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match="nothing reads"):
        split_params({**default_params(), "turbulence_threshold": 3}, EnvSettings(), 10, 1)


# bfloat16 trains only where the CPU computes it natively (precision auto); emulated, as on a
# CPU without AVX512-BF16 or AMX, this test takes minutes instead of seconds
NATIVE_BF16 = pytest.mark.skipif(not native_bfloat16(), reason="no native bfloat16 on this CPU: "
                                 "precision auto trains in float32 here")


@pytest.mark.parametrize("precision, space", [
    ("float32", "weights"), pytest.param("bfloat16", "weights", marks=NATIVE_BF16),
    ("float32", "exposure"), ("float32", "relative")])
def test_ppo_learns_the_planted_signal(precision, space):
    """Out of sample, trained agents beat buy-and-hold and a random policy clearly: two
    seeds, trained together as a trial's splits are (each exactly as if alone, see above),
    in both training precisions and in each action space (measured: +75% / +106% in float32,
    +67% / +89% in bfloat16; exposure +32% / +29%, relative +105% / +121%; buy-and-hold
    -14.5%). The weights space trades with a 15% band, the others have their dead zone."""
    started = time.monotonic()
    torch.set_num_threads(2)
    bars = synthetic_market(n_assets=4, n_bars=4000, seed=0)
    feats = compute_features(bars, "v1")
    market = Market.from_bars(bars, Normalisation.fit(feats, np.arange(WARMUP, 3000)),
                              features=feats)
    settings = EnvSettings(lookback=1, episode_bars=336, action_space=space,
                           min_rebalance_weight=0.15 if space == "weights" else 0.0)
    ppo = PPOConfig(total_timesteps=600_000, n_envs=32, n_steps=64, learning_rate=1e-3,
                    hidden=64, layers=2, init_log_std=-1.0, gamma=0.5, gae_lambda=0.9,
                    precision=precision)
    seeds = [0, 1]
    env = BatchedTradingEnv.splits([market] * 2, [[(WARMUP, 3000)]] * 2, ppo.n_envs, settings,
                                   seeds)
    agents = train_ppo_splits(env, ppo, seeds)
    rand = run_backtest(random_policy(5, seed=0), market, 3000, 4000, settings).metrics()
    for seed, agent in zip(seeds, agents):
        trained = run_backtest(agent.weights, market, 3000, 4000, settings).metrics()
        print(f"{space} seed {seed}: agent {trained['total_return']:+.1%} Sharpe {trained['sharpe']:.2f}; "
              f"buy-and-hold {trained['bh_total_return']:+.1%} Sharpe "
              f"{trained['bh_sharpe']:.2f}; random {rand['total_return']:+.1%} Sharpe "
              f"{rand['sharpe']:.2f}; {time.monotonic() - started:.0f} s")
        assert trained["total_return"] > trained["bh_total_return"] + 0.2
        assert trained["sharpe"] > trained["bh_sharpe"] + 3.0
        assert trained["total_return"] > rand["total_return"] + 0.2
        assert trained["sharpe"] > rand["sharpe"] + 3.0


def _fast_config(tmp_path, **training):
    return load_config(write_config(tmp_path / "etc", {
        "paths": {"state_dir": str(tmp_path / "state")},
        "training": {"total_timesteps": 2048, "n_envs": 16, **training}}))


def test_held_out_window_is_never_trained_on(tmp_path):
    cfg = _fast_config(tmp_path)
    from cappuccino_core.data import load_bars
    bars = load_bars(cfg)
    data = prepare_data(bars, bars.index[-1000], "v1")
    data.check_segments([(WARMUP, len(bars) - 1000)])
    with pytest.raises(HeldOutError):
        data.check_segments([(WARMUP, len(bars) - 999)])


class PruneEveryTrial(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_trial_is_pruned_when_its_first_batch_of_splits_finishes(tmp_path):
    """Batched trainings still report the running mean split by split as a batch finishes,
    and the pruner can end the trial there: nothing after the first batch is trained."""
    cfg = _fast_config(tmp_path, split_batch=3)
    from cappuccino_core.data import load_bars
    bars = load_bars(cfg)
    data = prepare_data(bars, new_train_end(bars, 60, 3600), "v1")
    progress = []
    obj = Objective(cfg, data, "pruned", TrialArtifacts(cfg, app_engine(cfg)),
                    progress=progress.append)
    study = optuna.create_study(direction="maximize", pruner=PruneEveryTrial())
    study.optimize(obj, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    splits = trial.user_attrs["splits"]
    assert sorted(trial.intermediate_values) == [0, 1, 2] and len(splits) == 3
    for step in range(3):  # the running mean, as each split of the batch is reported
        assert trial.intermediate_values[step] == pytest.approx(
            np.mean([s["excess_sharpe"] for s in splits[:step + 1]]))
    assert progress and all(p.startswith("trial 0, splits 1-3/15, update") for p in progress)


def test_one_full_trial_on_the_bundled_sample(tmp_path, storage_url):
    cfg = _fast_config(tmp_path)
    cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage, url=storage_url))
    study = open_study(cfg, "sample")
    set_target(study, 1)
    assert run_worker(cfg, "sample", WorkerHooks()) == 1
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and math.isfinite(trial.value)
    assert len(trial.user_attrs["splits"]) == 15  # CPCV 6 groups, 2 test groups
    excess = [s["excess_sharpe"] for s in trial.user_attrs["splits"]]
    # the documented objective, from the recorded splits
    assert trial.value == pytest.approx(np.mean(excess) - 0.1 * np.std(excess))
    assert trial.user_attrs["mean_excess_sharpe"] == pytest.approx(np.mean(excess))
    assert trial.user_attrs["worst_excess_sharpe"] == pytest.approx(min(excess))
    assert trial.user_attrs["mean_max_drawdown"] == pytest.approx(
        np.mean([s["max_drawdown"] for s in trial.user_attrs["splits"]]))
    # each training's last PPO update, averaged over the 16 trainings (2 updates each here)
    assert 0 < trial.user_attrs["ppo_learning_rate"] <= trial.params["learning_rate"]
    assert trial.user_attrs["ppo_epochs"] == trial.params["update_epochs"]
    assert 0 <= trial.user_attrs["ppo_clip_fraction"] <= 1
    assert study.user_attrs["train_end"] and study.user_attrs["heldout_days"] == 60
    agent, spec = load_artifact(local_model(cfg, trial), trial.user_attrs["sha256"])
    assert spec.study == "sample" and spec.trial_id == trial._trial_id
    assert list(spec.symbols) == cfg.data.symbols and spec.value == trial.value
    assert spec.env.trailing_stop_pct == cfg.risk.trailing_stop_pct  # trained as traded
    assert spec.seed == trial.user_attrs["seed"]
    assert spec.trained_on["to"] < study.user_attrs["train_end"]
    obs = torch.zeros(2, spec.network.obs_size)
    w = agent.weights(obs)
    assert torch.allclose(w.sum(-1), torch.ones(2))
    # the target is reached: a second run does nothing
    assert run_worker(cfg, "sample", WorkerHooks()) == 0


def test_a_v2_study_trains_serves_and_refuses_a_v1_configuration(tmp_path):
    """`data.feature_set: v2` end to end: the trial's model reads v2's columns, the published
    ensemble decides on them, and a configuration still on v1 skips the member by name."""
    from cappuccino_core.rl.backtest import backtest_ensemble, first_decision_bar
    from cappuccino_core.common.config import set_config_values
    from cappuccino_core.data import load_bars
    from cappuccino_core.data.features import FEATURE_NAMES, feature_names
    from cappuccino_core.ensemble.manifest import current_dir, ensembles_dir
    from cappuccino_core.ensemble.publish import sync
    from cappuccino_core.ensemble.selection import select_members
    from cappuccino_core.ensemble.serving import Ensemble
    from cappuccino_core.rl.env import observation_size

    cfg_dir = write_config(tmp_path / "etc", {
        "paths": {"state_dir": str(tmp_path / "state")}, "data": {"feature_set": "v2"},
        "training": {"total_timesteps": 2048, "n_envs": 16, "cv": "walk_forward",
                     "cv_groups": 3, "cv_test_groups": 1},
        "ensemble": {"min_value": None, "min_members": 1, "near_constant": "admit"}},
        active_study="wide")
    cfg = load_config(cfg_dir)
    study = open_study(cfg, "wide")
    set_target(study, 1)
    assert run_worker(cfg, "wide", WorkerHooks()) == 1
    (trial,) = study.get_trials()
    _, spec = load_artifact(local_model(cfg, trial), trial.user_attrs["sha256"])
    names = feature_names("v2")
    assert spec.feature_set == "v2" and spec.feature_names == names
    assert len(names) > len(FEATURE_NAMES)
    assert spec.network.obs_size == observation_size(len(spec.symbols), len(names), spec.lookback)

    engine = app_engine(cfg)
    assert "published" in sync(cfg, engine).message
    ens = Ensemble.load(current_dir(ensembles_dir(cfg)), cfg)
    bars = load_bars(cfg)
    lo = first_decision_bar(ens)
    result = backtest_ensemble(cfg, ens, bars, compute_features(bars, "v2"), lo, lo + 200)
    assert result.metrics()["bars"] == 199 and np.isfinite(result.equity).all()

    set_config_values(cfg_dir, "data", {"feature_set": "v1"})
    (skipped,) = select_members(engine, load_config(cfg_dir), "wide").skipped
    assert skipped[0] == trial._trial_id and "feature set v2 != configured v1" in skipped[2]
