"""PPO on batched rollouts, in the spirit of CleanRL's ppo_continuous_action.py.

The policy outputs a Gaussian over A+1 logits; the portfolio's target weights are their softmax
(assets then cash), so any action is a valid allocation and an order's size always follows from
a fraction of equity. Evaluation is deterministic: the softmax of the mean.

Every field of `PPOConfig` is used below; the search space (training/search_space.py) samples
them, and a test checks that changing any one of them changes the trained policy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .env import BatchedTradingEnv


@dataclass(frozen=True)
class PPOConfig:
    learning_rate: float = 3e-4
    anneal_lr: bool = True          # linear schedule to 0 over the run
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    update_epochs: int = 4
    num_minibatches: int = 4
    n_steps: int = 64               # rollout length per environment
    hidden: int = 128
    layers: int = 2
    init_log_std: float = -0.5
    reward_scale: float = 100.0     # hourly log returns are ~1e-3; the critic learns better x100
    total_timesteps: int = 200_000
    n_envs: int = 64
    # CleanRL's early stop: an update's epochs end once the approximate KL divergence from the
    # rollout's policy passes this (null: every epoch runs)
    target_kl: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mlp(n_in: int, n_out: int, hidden: int, layers: int, out_gain: float) -> nn.Sequential:
    mods, width = [], n_in
    for _ in range(layers):
        lin = nn.Linear(width, hidden)
        nn.init.orthogonal_(lin.weight, math.sqrt(2))
        nn.init.zeros_(lin.bias)
        mods += [lin, nn.Tanh()]
        width = hidden
    out = nn.Linear(width, n_out)
    nn.init.orthogonal_(out.weight, out_gain)
    nn.init.zeros_(out.bias)
    return nn.Sequential(*mods, out)


class ActorCritic(nn.Module):
    def __init__(self, obs_size: int, n_actions: int, hidden: int, layers: int,
                 init_log_std: float):
        super().__init__()
        self.actor = _mlp(obs_size, n_actions, hidden, layers, 0.01)
        self.critic = _mlp(obs_size, 1, hidden, layers, 1.0)
        self.log_std = nn.Parameter(torch.full((n_actions,), float(init_log_std)))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def dist(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.actor(obs)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    @torch.no_grad()
    def weights(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic target weights (assets then cash) for evaluation and trading."""
        return torch.softmax(self.actor(obs), dim=-1)


@dataclass
class TrainStats:
    """One PPO update, with the diagnostics CleanRL logs (last minibatch's losses; KL and clip
    fraction averaged over the update's minibatches)."""
    update: int
    n_updates: int
    env_steps: int
    mean_reward: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float = 0.0
    clip_fraction: float = 0.0
    explained_variance: float = 0.0
    learning_rate: float = 0.0
    epochs: int = 0  # run this update (fewer than update_epochs after a target_kl stop)

    DIAGNOSTICS = ("mean_reward", "policy_loss", "value_loss", "entropy", "approx_kl",
                   "clip_fraction", "explained_variance", "learning_rate", "epochs")

    def diagnostics(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in self.DIAGNOSTICS}


def explained_variance(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var(target - predicted) / Var(target): 1 is a perfect critic, 0 no better than the
    mean, negative worse than it."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - predicted).var() / var)


def train_ppo(env: BatchedTradingEnv, cfg: PPOConfig, seed: int,
              on_update: Callable[[TrainStats], None] | None = None) -> ActorCritic:
    """Train a fresh policy on `env` for `cfg.total_timesteps` env steps.

    `on_update` is called after every PPO update (progress, watchdog pings, SIGTERM checks:
    raising from it aborts the training)."""
    torch.manual_seed(seed)
    device = env.device
    n_actions = env.m.n_assets + 1
    agent = ActorCritic(env.obs_size, n_actions, cfg.hidden, cfg.layers,
                        cfg.init_log_std).to(device)
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5)
    N, S = env.n, cfg.n_steps
    batch = N * S
    minibatch = max(1, batch // cfg.num_minibatches)
    n_updates = max(1, cfg.total_timesteps // batch)
    noise = torch.Generator(device=device).manual_seed(seed + 1)

    obs_buf = torch.zeros(S, N, env.obs_size, device=device)
    act_buf = torch.zeros(S, N, n_actions, device=device)
    logp_buf = torch.zeros(S, N, device=device)
    rew_buf = torch.zeros(S, N, device=device)
    done_buf = torch.zeros(S, N, device=device)
    val_buf = torch.zeros(S, N, device=device)

    last_obs = env.reset()
    for update in range(1, n_updates + 1):
        if cfg.anneal_lr:
            opt.param_groups[0]["lr"] = cfg.learning_rate * (1 - (update - 1) / n_updates)
        with torch.no_grad():
            obs_buf[0] = last_obs
            for step in range(S):
                obs = obs_buf[step]  # the env wrote it there: no copy, no allocation
                d = agent.dist(obs)
                action = d.mean + d.stddev * torch.randn(d.mean.shape, generator=noise,
                                                         device=device)
                act_buf[step] = action
                logp_buf[step] = d.log_prob(action).sum(-1)
                val_buf[step] = agent.value(obs)
                _, reward, done, _ = env.step(torch.softmax(action, -1), with_info=False,
                                              out=obs_buf[step + 1] if step + 1 < S else last_obs)
                rew_buf[step] = reward * cfg.reward_scale
                done_buf[step] = done.float()
            # GAE; an episode end (done) cuts the bootstrap
            next_value = agent.value(last_obs)
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(N, device=device)
            for step in reversed(range(S)):
                nv = next_value if step == S - 1 else val_buf[step + 1]
                nonterminal = 1.0 - done_buf[step]
                delta = rew_buf[step] + cfg.gamma * nv * nonterminal - val_buf[step]
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
                adv[step] = last
            ret = adv + val_buf

        b_obs, b_act = obs_buf.reshape(batch, -1), act_buf.reshape(batch, -1)
        b_logp, b_adv = logp_buf.reshape(-1), adv.reshape(-1)
        b_ret, b_val = ret.reshape(-1), val_buf.reshape(-1)
        perm_gen = torch.Generator().manual_seed(seed + update)
        kls, clipped, epochs = [], [], 0
        for _ in range(cfg.update_epochs):
            epochs += 1
            perm = torch.randperm(batch, generator=perm_gen).to(device)
            for start in range(0, batch, minibatch):
                idx = perm[start:start + minibatch]
                d = agent.dist(b_obs[idx])
                logp = d.log_prob(b_act[idx]).sum(-1)
                log_ratio = logp - b_logp[idx]
                ratio = log_ratio.exp()
                with torch.no_grad():  # http://joschu.net/blog/kl-approx.html, as in CleanRL
                    kls.append(((ratio - 1) - log_ratio).mean())
                    clipped.append(((ratio - 1.0).abs() > cfg.clip_coef).float().mean())
                a = b_adv[idx]
                a = (a - a.mean()) / (a.std() + 1e-8)
                pg_loss = torch.max(-a * ratio,
                                    -a * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                v = agent.value(b_obs[idx])
                v_clipped = b_val[idx] + (v - b_val[idx]).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((v - b_ret[idx]) ** 2,
                                         (v_clipped - b_ret[idx]) ** 2).mean()
                entropy = d.entropy().sum(-1).mean()
                loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                opt.step()
            if cfg.target_kl is not None and float(kls[-1]) > cfg.target_kl:
                break
        if on_update:
            on_update(TrainStats(update, n_updates, update * batch,
                                 float(rew_buf.mean()) / cfg.reward_scale, pg_loss.item(),
                                 v_loss.item(), entropy.item(),
                                 approx_kl=float(torch.stack(kls).mean()),
                                 clip_fraction=float(torch.stack(clipped).mean()),
                                 explained_variance=explained_variance(b_val, b_ret),
                                 learning_rate=opt.param_groups[0]["lr"], epochs=epochs))
    return agent


def random_policy(n_actions: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A baseline: random Dirichlet(1) weights every bar."""
    rng = np.random.default_rng(seed)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        w = rng.dirichlet(np.ones(n_actions), size=obs.shape[0])
        return torch.as_tensor(w, dtype=torch.float32, device=obs.device)
    return policy
