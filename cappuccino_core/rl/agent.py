"""PPO on batched rollouts, in the spirit of CleanRL's ppo_continuous_action.py.

The policy outputs a Gaussian over its action space's outputs (rl/actions.py: A+1 logits whose
softmax is the target, one exposure, or A tilts from equal weight with a dead zone), so any
action is a valid allocation and an order's size always follows from a fraction of equity.
Sampled actions go through the same mapping as the mean (a sample inside the dead zone trades
nothing). Evaluation is deterministic: the mapping of the mean.

Every field of `PPOConfig` is used below; the search space (training/search_space.py) samples
them, and a test checks that changing any one of them changes the trained policy.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .actions import n_outputs, to_targets
from .env import BatchedTradingEnv, portfolio_columns
from .env_settings import EnvSettings


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
    # the untrained policy's cash weight (softmax of its mean action); null: 1/(A+1), every
    # output alike. An agent that starts uniform holds 1/(A+1) in cash and must learn to
    # invest before it can learn anything else; one that starts at the cash reserve starts as
    # equal-weight holding, the yardstick, and learns departures from it.
    init_cash_weight: float | None = None
    reward_scale: float = 100.0     # hourly log returns are ~1e-3; the critic learns better x100
    total_timesteps: int = 200_000
    n_envs: int = 64
    # CleanRL's early stop: an update's epochs end once the approximate KL divergence from the
    # rollout's policy passes this (null: every epoch runs)
    target_kl: float | None = None
    # the hidden layers' arithmetic in training: float32, or bfloat16 (weights, optimiser and
    # output layers stay float32; evaluation and trading always run float32)
    precision: str = "float32"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def gradient_steps(cfg: PPOConfig, n_envs: int | None = None) -> int:
    """Adam steps one fit makes: updates x epochs x minibatches (fewer after a target_kl
    stop)."""
    batch = (n_envs or cfg.n_envs) * cfg.n_steps
    return max(1, cfg.total_timesteps // batch) * cfg.update_epochs * cfg.num_minibatches


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
    """`settings`: the environment it acts in (its action space, dead zone and cash reserve
    turn its outputs into target weights for `n_assets`); default the `weights` space."""

    def __init__(self, obs_size: int, n_actions: int, hidden: int, layers: int,
                 init_log_std: float, init_cash_weight: float | None = None,
                 settings: EnvSettings | None = None, n_assets: int | None = None):
        super().__init__()
        self.settings = settings or EnvSettings()
        self.n_assets = n_actions - 1 if n_assets is None else n_assets
        self.actor = _mlp(obs_size, n_actions, hidden, layers, 0.01)
        if init_cash_weight is not None and self.settings.action_space == "weights":
            # softmax([0] * A + [c])[-1] = w: e^c = A w / (1 - w)
            w = init_cash_weight
            nn.init.constant_(self.actor[-1].bias[-1:], math.log((n_actions - 1) * w / (1 - w)))
        self.critic = _mlp(obs_size, 1, hidden, layers, 1.0)
        self.log_std = nn.Parameter(torch.full((n_actions,), float(init_log_std)))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def weights(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic target weights (assets then cash; NaN: hold) for evaluation and
        trading."""
        return targets(self.actor(obs), obs, self.settings, self.n_assets)


def targets(action: torch.Tensor, obs: torch.Tensor, s: EnvSettings,
            n_assets: int) -> torch.Tensor:
    """Target weights from actions in `s`'s action space; the observation starts with the
    portfolio's columns (env.py's layout)."""
    return to_targets(s.action_space, action, obs[..., :portfolio_columns(n_assets)], n_assets,
                      s.dead_zone, s.min_cash_reserve_pct)


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


# A StackedParameters gradient is a strided view (a split's row of one buffer), which torch
# flags once as a possible slowdown: backward adds into it in place, as intended.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")


class StackedParameters:
    """Every parameter of K stacked networks in one `[K, P]` tensor (row k: split k's), each
    parameter a leaf view `[K, *shape]` of its columns, and its gradient the same view of one
    `[K, P]` gradient: clipping and Adam are a few whole-buffer operations with per-split
    scalars as `[K, 1]`, instead of a dozen operations per parameter."""

    def __init__(self, per_split: list[list[torch.Tensor]]):
        """`per_split[k]`: split k's tensors, the same shapes in the same order for every k."""
        self.data = torch.stack([torch.cat([t.detach().reshape(-1) for t in ts])
                                 for ts in per_split]).contiguous()
        self.grad = torch.zeros_like(self.data)
        self.tensors, offset = [], 0
        for t in per_split[0]:
            cols = slice(offset, offset + t.numel())
            p = self.data[:, cols].view(len(per_split), *t.shape).requires_grad_()
            p.grad = self.grad[:, cols].view_as(p)  # backward adds into it in place
            self.tensors.append(p)
            offset += t.numel()


PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


class StackedMLP:
    """K copies of one `_mlp`'s shape, weights stacked along a split dimension: one batched
    matmul (`baddbmm`) per layer serves every split; inputs are `[K, B, in]`. With a
    `hidden_dtype` the hidden layers compute in it (bfloat16: ~1.6x a float32 update on CPUs
    with native bfloat16), the output layer in float32, so that means, log-densities and
    values keep float32's resolution."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor],
                 hidden_dtype: torch.dtype | None = None):
        self.weights, self.biases = weights, biases  # [K, in, out], [K, 1, out]
        self.hidden_dtype = hidden_dtype

    @staticmethod
    def tensors(mlp: nn.Sequential) -> list[torch.Tensor]:
        """One split's weights (as `x @ w`) then biases, as `StackedMLP` holds them."""
        linears = [m for m in mlp if isinstance(m, nn.Linear)]
        return [lin.weight.T for lin in linears] + [lin.bias.unsqueeze(0) for lin in linears]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i < last:
                if self.hidden_dtype is not None:
                    x, w, b = x.to(self.hidden_dtype), w.to(self.hidden_dtype), \
                        b.to(self.hidden_dtype)
                x = torch.tanh(torch.baddbmm(b, x, w))
            else:
                x = torch.baddbmm(b, x.float(), w)
        return x

    def copy_into(self, k: int, mlp: nn.Sequential) -> None:
        for lin, w, b in zip([m for m in mlp if isinstance(m, nn.Linear)], self.weights,
                             self.biases):
            lin.weight.data.copy_(w[k].detach().T)
            lin.bias.data.copy_(b[k, 0].detach())


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class StackedActorCritic:
    """K `ActorCritic`s trained at once (one per split, each from its own seed's
    initialisation): the same computation as K separate ones, batched. The Gaussian policy's
    log-density and entropy are written out (torch.distributions' Normal, without its
    per-call checks and with the entropy, which does not depend on the observation, once)."""

    def __init__(self, agents: list[ActorCritic], precision: str = "float32"):
        self.params = StackedParameters([
            StackedMLP.tensors(a.actor) + StackedMLP.tensors(a.critic)
            + [a.log_std.unsqueeze(0)] for a in agents])
        t, n = self.params.tensors, len(StackedMLP.tensors(agents[0].actor)) // 2
        dtype = PRECISIONS[precision]
        self.actor = StackedMLP(t[:n], t[n:2 * n], dtype)
        self.critic = StackedMLP(t[2 * n:3 * n], t[3 * n:4 * n], dtype)
        self.log_std = t[-1]  # [K, 1, A]

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def log_prob(self, mean: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Summed over actions: the log-density of `action` under N(mean, exp(log_std)^2)."""
        z = (action - mean) * torch.exp(-self.log_std)
        return (-0.5 * z * z - self.log_std - HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """[K]: each split's policy entropy, summed over actions (the same at every obs)."""
        return (0.5 + HALF_LOG_2PI + self.log_std).sum(-1).squeeze(-1)

    def unstack(self, agents: list[ActorCritic]) -> list[ActorCritic]:
        for k, agent in enumerate(agents):
            self.actor.copy_into(k, agent.actor)
            self.critic.copy_into(k, agent.critic)
            agent.log_std.data.copy_(self.log_std[k, 0].detach())
        return agents


class StackedAdam:
    """torch.optim.Adam's arithmetic (eps 1e-5, no weight decay) on stacked parameters, with
    a step count per split so that a split whose epochs ended (target_kl) stands still."""

    def __init__(self, params: StackedParameters, betas=(0.9, 0.999), eps=1e-5):
        self.params, self.betas, self.eps = params, betas, eps
        self.m = torch.zeros_like(params.data)
        self.v = torch.zeros_like(params.data)
        self.steps = torch.zeros(params.data.shape[0], dtype=torch.float64)  # per split

    def step(self, lr: float, active: torch.Tensor) -> None:
        """One Adam step from the accumulated gradients, which it then zeroes."""
        b1, b2 = self.betas
        self.steps += active.double()
        steps = self.steps.clamp_min(1)
        device = self.m.device
        step_size = (lr / (1 - b1 ** steps)).float().unsqueeze(1).to(device)
        bc2_sqrt = (1 - b2 ** steps).sqrt().float().unsqueeze(1).to(device)
        g, m, v = self.params.grad, self.m, self.v
        if bool(active.all()):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
        else:  # a stopped split: its moments and weights stay as they are
            keep = active.unsqueeze(1).to(device)
            m.copy_(torch.where(keep, m.lerp(g, 1 - b1), m))
            v.copy_(torch.where(keep, v * b2 + (1 - b2) * g * g, v))
            step_size = torch.where(keep, step_size, 0.0)
        denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
        self.params.data.sub_(m / denom * step_size)
        g.zero_()


def clip_grad_norms(params: StackedParameters, max_norm: float) -> None:
    """clip_grad_norm_ per split: each split's gradient is scaled by its own norm."""
    norms = params.grad.pow(2).sum(1, keepdim=True).sqrt()
    params.grad.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0))


def train_ppo(env: BatchedTradingEnv, cfg: PPOConfig, seed: int,
              on_update: Callable[[TrainStats], None] | None = None) -> ActorCritic:
    """Train a fresh policy on `env` (one split) for `cfg.total_timesteps` env steps.

    `on_update` is called after every PPO update (progress, watchdog pings, SIGTERM checks:
    raising from it aborts the training)."""
    (agent,) = train_ppo_splits(env, cfg, [seed],
                                None if on_update is None else lambda st: on_update(st[0]))
    return agent


def train_ppo_splits(env: BatchedTradingEnv, cfg: PPOConfig, seeds: list[int],
                     on_update: Callable[[list[TrainStats]], None] | None = None
                     ) -> list[ActorCritic]:
    """Train one fresh policy per split of `env` (`BatchedTradingEnv.splits`), split k from
    `seeds[k]`, each for `cfg.total_timesteps` of its own env steps, all in one batched
    computation. Per split it is the computation of training that split alone (initial
    weights, action noise, minibatch order, losses, gradient clipping, Adam, target_kl):
    only floating-point summation order differs, and in bfloat16 (`cfg.precision`) where its
    rounding falls (tests/test_training.py)."""
    device, K = env.device, env.k
    if len(seeds) != K:
        raise ValueError(f"{len(seeds)} seeds for {K} splits")
    n_assets = env.m.n_assets
    n_actions = n_outputs(env.s.action_space, n_assets)
    agents = []
    for seed in seeds:
        torch.manual_seed(seed)
        agents.append(ActorCritic(env.obs_size, n_actions, cfg.hidden, cfg.layers,
                                  cfg.init_log_std, cfg.init_cash_weight, env.s, n_assets))
    net = StackedActorCritic([a.to(device) for a in agents], cfg.precision)
    params = net.params
    opt = StackedAdam(params)
    N, S = env.n_per_split, cfg.n_steps
    batch = N * S
    minibatch = max(1, batch // cfg.num_minibatches)
    n_updates = max(1, cfg.total_timesteps // batch)
    noise = [torch.Generator(device=device).manual_seed(seed + 1) for seed in seeds]

    obs_buf = torch.zeros(S, K * N, env.obs_size, device=device)
    act_buf = torch.zeros(S, K, N, n_actions, device=device)
    logp_buf = torch.zeros(S, K, N, device=device)
    rew_buf = torch.zeros(S, K, N, device=device)
    done_buf = torch.zeros(S, K, N, device=device)
    val_buf = torch.zeros(S, K, N, device=device)
    splits = torch.arange(K, device=device).unsqueeze(-1)

    last_obs = env.reset()
    for update in range(1, n_updates + 1):
        lr = cfg.learning_rate * (1 - (update - 1) / n_updates) if cfg.anneal_lr \
            else cfg.learning_rate
        with torch.no_grad():
            obs_buf[0] = last_obs
            for step in range(S):
                obs = obs_buf[step].view(K, N, -1)  # the env wrote it there: no copy
                mean = net.actor(obs)
                eps = torch.stack([torch.randn((N, n_actions), generator=g, device=device)
                                   for g in noise])
                action = mean + net.log_std.exp() * eps
                act_buf[step] = action
                logp_buf[step] = net.log_prob(mean, action)
                val_buf[step] = net.value(obs)
                target = targets(action, obs, env.s, n_assets)  # sampled: the dead zone too
                _, reward, done, _ = env.step(target.view(K * N, -1), with_info=False,
                                              out=obs_buf[step + 1] if step + 1 < S else last_obs)
                rew_buf[step] = reward.view(K, N) * cfg.reward_scale
                done_buf[step] = done.view(K, N).float()
            # GAE; an episode end (done) cuts the bootstrap
            next_value = net.value(last_obs.view(K, N, -1))
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(K, N, device=device)
            for step in reversed(range(S)):
                nv = next_value if step == S - 1 else val_buf[step + 1]
                nonterminal = 1.0 - done_buf[step]
                delta = rew_buf[step] + cfg.gamma * nv * nonterminal - val_buf[step]
                last = delta + cfg.gamma * cfg.gae_lambda * nonterminal * last
                adv[step] = last
            ret = adv + val_buf

        # per split, the (step, env) order of a split trained alone
        b_obs = obs_buf.view(S, K, N, -1).transpose(0, 1).reshape(K, batch, -1)
        b_act = act_buf.transpose(0, 1).reshape(K, batch, -1)
        b_logp, b_adv, b_ret, b_val = (x.transpose(0, 1).reshape(K, batch)
                                       for x in (logp_buf, adv, ret, val_buf))
        perm_gens = [torch.Generator().manual_seed(seed + update) for seed in seeds]
        active = torch.ones(K, dtype=torch.bool)
        epochs = torch.zeros(K, dtype=torch.long)
        kls, clipped = [], []  # [K] per minibatch, over the splits still running
        last_losses = torch.zeros(3, K, device=device)  # each split's last minibatch run
        for _ in range(cfg.update_epochs):
            epochs += active.long()
            running = active.to(device)
            perm = torch.stack([torch.randperm(batch, generator=g) for g in perm_gens]).to(device)
            for start in range(0, batch, minibatch):
                idx = perm[:, start:start + minibatch]
                rows = (idx + splits * batch).view(-1)  # a row copy: faster than [splits, idx]
                obs = b_obs.view(K * batch, -1).index_select(0, rows).view(K, minibatch, -1)
                act = b_act.view(K * batch, -1).index_select(0, rows).view(K, minibatch, -1)
                logp = net.log_prob(net.actor(obs), act)
                log_ratio = logp - b_logp.gather(1, idx)
                ratio = log_ratio.exp()
                with torch.no_grad():  # http://joschu.net/blog/kl-approx.html, as in CleanRL
                    kls.append(torch.where(running, ((ratio - 1) - log_ratio).mean(1),
                                           float("nan")))
                    clipped.append(torch.where(
                        running, ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(1),
                        float("nan")))
                a = b_adv.gather(1, idx)
                a = (a - a.mean(1, keepdim=True)) / (a.std(1, keepdim=True) + 1e-8)
                pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - cfg.clip_coef,
                                                                 1 + cfg.clip_coef)).mean(1)
                v = net.value(obs)
                old_v, ret_mb = b_val.gather(1, idx), b_ret.gather(1, idx)
                v_clipped = old_v + (v - old_v).clamp(-cfg.clip_coef, cfg.clip_coef)
                v_loss = 0.5 * torch.max((v - ret_mb) ** 2, (v_clipped - ret_mb) ** 2).mean(1)
                entropy = net.entropy()
                # a sum over splits: each split's gradient is that of its own loss
                loss = (pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss).sum()
                loss.backward()
                last_losses = torch.where(running, torch.stack(
                    [pg_loss, v_loss, entropy]).detach(), last_losses)
                clip_grad_norms(params, cfg.max_grad_norm)
                opt.step(lr, active)
            if cfg.target_kl is not None:
                active &= ~(kls[-1].cpu() > cfg.target_kl)
                if not bool(active.any()):
                    break
        if on_update:
            kl, cf = torch.stack(kls).nanmean(0), torch.stack(clipped).nanmean(0)
            on_update([TrainStats(update, n_updates, update * batch,
                                  float(rew_buf[:, k].mean()) / cfg.reward_scale,
                                  *(float(x) for x in last_losses[:, k]),
                                  approx_kl=float(kl[k]), clip_fraction=float(cf[k]),
                                  explained_variance=explained_variance(b_val[k], b_ret[k]),
                                  learning_rate=lr, epochs=int(epochs[k]))
                       for k in range(K)])
    return net.unstack(agents)


class SplitPolicy:
    """Deterministic target weights of several agents at once: row r of an observation batch
    is `agents[row_agent[r]]`'s (one batched forward, for batched backtests)."""

    def __init__(self, agents: list[ActorCritic], row_agent: list[int]):
        used = sorted(set(row_agent))  # agents no row asks for are left out
        self.net = StackedActorCritic([agents[j] for j in used])
        self.settings, self.n_assets = agents[used[0]].settings, agents[used[0]].n_assets
        if any(agents[j].settings.action_space != self.settings.action_space for j in used):
            raise ValueError("one SplitPolicy serves one action space")
        row_agent = [used.index(k) for k in row_agent]
        slots = [[r for r, k in enumerate(row_agent) if k == j] for j in range(len(used))]
        width = max(len(rows) for rows in slots)
        # [K, width] row numbers (padded with the agent's own first row), and where each row's
        # answer lands
        self.rows = torch.tensor([rows + [rows[0]] * (width - len(rows)) for rows in slots])
        self.pick_agent = torch.tensor(row_agent)
        self.pick_slot = torch.tensor([slots[k].index(r) for r, k in enumerate(row_agent)])

    @torch.no_grad()
    def __call__(self, obs: torch.Tensor) -> torch.Tensor:
        if self.rows.device != obs.device:  # once: the agents' device
            self.rows, self.pick_agent, self.pick_slot = (
                x.to(obs.device) for x in (self.rows, self.pick_agent, self.pick_slot))
        obs = obs[self.rows]
        w = targets(self.net.actor(obs), obs, self.settings, self.n_assets)
        return w[self.pick_agent, self.pick_slot]
