"""The hyperparameter search space, and where each parameter goes.

Every sampled parameter reaches either the PPO algorithm (`PPOConfig`) or the environment
(`EnvSettings`); nothing is sampled that nothing reads (a test trains with each one changed and
checks the outcome changes). Risk limits, fees and the trailing stop are NOT searched: they come
from cappuccino.yaml so that training uses exactly what the trader applies live.
"""

from __future__ import annotations

import dataclasses

import optuna

from ..rl.actions import SPACES
from ..rl.agent import PPOConfig
from ..rl.env import EnvSettings

# set by the training config (and the device), not searched
NOT_SEARCHED = {"total_timesteps", "n_envs", "reward_scale", "target_kl", "precision"}
PPO_PARAMS = {f.name for f in dataclasses.fields(PPOConfig)} - NOT_SEARCHED
ENV_PARAMS = {"lookback", "episode_bars", "min_rebalance_weight", "reward", "action_space"}
# a default fit's gradient steps (updates x epochs x minibatches) at the least
MIN_GRADIENT_STEPS = 100


def sample_params(trial: optuna.Trial) -> dict:
    return {
        # below 1e-4 a trial's budget barely moves the policy from its initial weights (issue
        # 16: the "best" trials at 1-3e-5 held ~uniform weights throughout); above 1e-3 CV
        # values fell apart (benchmarks/search_quality.py, 24 trials: every trial above 1e-3
        # scored -1.9 .. -10.9, the best ones sat at 1.2-4.6e-4)
        "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-3, log=True),
        "anneal_lr": trial.suggest_categorical("anneal_lr", [True, False]),
        "gamma": trial.suggest_float("gamma", 0.5, 0.999),
        "gae_lambda": trial.suggest_float("gae_lambda", 0.8, 0.99),
        "clip_coef": trial.suggest_float("clip_coef", 0.1, 0.3),
        "ent_coef": trial.suggest_float("ent_coef", 1e-5, 1e-2, log=True),
        "vf_coef": trial.suggest_float("vf_coef", 0.25, 1.0),
        "max_grad_norm": trial.suggest_float("max_grad_norm", 0.3, 2.0),
        # at least MIN_GRADIENT_STEPS Adam steps per default fit (200k env steps, 64 envs):
        # 2 minibatches of 128-step rollouts made 96; more minibatches, not shorter rollouts
        # (those multiply the steps, and a trial's time, at the top of the range)
        "update_epochs": trial.suggest_int("update_epochs", 2, 10),
        "num_minibatches": trial.suggest_categorical("num_minibatches", [4, 8]),
        "n_steps": trial.suggest_categorical("n_steps", [32, 64, 128]),
        "hidden": trial.suggest_categorical("hidden", [64, 128, 256]),
        "layers": trial.suggest_int("layers", 1, 3),
        # exploration that does not pay for noise: at -2..0 training rollouts turned over
        # 12-70% of equity an hour (issue 26); see benchmarks/exploration.py
        "init_log_std": trial.suggest_float("init_log_std", -3.0, -1.0),
        # start uniform (null) or at equal-weight holding: 5% cash, the default reserve
        "init_cash_weight": trial.suggest_categorical("init_cash_weight", [None, 0.05]),
        "lookback": trial.suggest_categorical("lookback", [1, 2, 4, 8]),
        "episode_bars": trial.suggest_categorical("episode_bars", [168, 336, 720]),
        # a band wider than an asset's share of the portfolio (1/7 with 7 assets) forbids most
        # trades; the trader rebalances with the members' median band
        "min_rebalance_weight": trial.suggest_float("min_rebalance_weight", 0.0, 0.05),
        "reward": trial.suggest_categorical("reward", ["log_growth", "excess"]),
        # rl/actions.py; members of different spaces serve in one ensemble
        "action_space": trial.suggest_categorical("action_space", list(SPACES)),
    }


def default_params() -> dict:
    """The defaults of both dataclasses, as a parameter dict (tests, benchmarks, the demo)."""
    ppo, env = PPOConfig(), EnvSettings()
    return {**{k: getattr(ppo, k) for k in PPO_PARAMS}, **{k: getattr(env, k) for k in ENV_PARAMS}}


def split_params(params: dict, base_env: EnvSettings, total_timesteps: int,
                 n_envs: int, target_kl: float | None = None,
                 precision: str = "float32") -> tuple[PPOConfig, EnvSettings]:
    """Route each parameter to the algorithm or the environment; refuse unknown ones."""
    unknown = set(params) - PPO_PARAMS - ENV_PARAMS
    if unknown:
        raise ValueError(f"parameters nothing reads: {sorted(unknown)}")
    ppo = PPOConfig(total_timesteps=total_timesteps, n_envs=n_envs, target_kl=target_kl,
                    precision=precision,
                    **{k: v for k, v in params.items() if k in PPO_PARAMS})
    env = dataclasses.replace(base_env, **{k: v for k, v in params.items() if k in ENV_PARAMS})
    return ppo, env
