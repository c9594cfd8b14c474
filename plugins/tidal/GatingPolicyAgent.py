"""Actor-critic for the gating policy, in the style of CleanRL's `ppo_continuous_action.py` (ADR 0005).

obs (B, O) → running mean/std normalisation, clipped to ±RL_OBS_CLIP → Linear(O, 128) → tanh → Linear(128, 64)
→ tanh → features (B, 64), shared by (O = RL_OBSERVATION_DIM, which RLConfig holds equal to
GatingEnvironment.OBSERVATION_DIM)
  actor    64 → 32 → 2   Beta(α, β) over m ∈ [0, 1]    "beta"
           64 → 32 → 1   mean of a sigmoid-squashed Normal over m   "gaussian"
           64 → 32 → K   Categorical over K = RL_NUM_ACTIONS discrete actions   "categorical"
  critic   64 → 32 → 1   V(s)
  cost     64 → 32 → 1   V_c(s), only when RL_CONSTRAINT_MODE == "lagrangian"
Actions are one value per row, shape (B,), float: m for beta and gaussian, the action's index for categorical.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Beta, Categorical, Normal

from plugins.tidal.Config import RLConfig

FEATURE_DIM = 64      # trunk output width (a fixed architecture width, ADR 0005)
HEAD_HIDDEN_DIM = 32  # hidden width of every head (a fixed architecture width, ADR 0005)
ACTION_EPS = 1e-6     # actions are clamped to [ε, 1 − ε] so log-probabilities stay finite at the bounds
OBS_NORM_EPS = 1e-8   # added to the running variance so a constant observation slot does not divide by zero

# Gauss–Hermite nodes/weights (probabilists' form, weight exp(−x²/2)) for E[f(u)], u ~ N(μ, σ): see ADR 0005.
_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(16)
_GH_WEIGHTS = _GH_WEIGHTS / math.sqrt(2 * math.pi)


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


def _head(out_dim: int) -> nn.Sequential:
    """64 → 32 → tanh → out_dim, with a near-zero output layer so the initial policy and values are flat."""
    return nn.Sequential(layer_init(nn.Linear(FEATURE_DIM, HEAD_HIDDEN_DIM)), nn.Tanh(),
                         layer_init(nn.Linear(HEAD_HIDDEN_DIM, out_dim), gain=0.01))


class RunningObsNorm(nn.Module):
    """Normalises observations by the running mean and variance of every observation it was updated with, then
    clips to ±clip (CleanRL's NormalizeObservation, kept inside the agent so the statistics are saved with it).

    The statistics change only through `update`, never in `forward`: the trainer decides when they move (between
    iterations), and evaluation uses them frozen. Before the first update it is the identity (then clipped)."""

    mean: torch.Tensor   # buffers (registered in __init__)
    var: torch.Tensor
    count: torch.Tensor

    def __init__(self, dim: int, clip: float):
        super().__init__()
        self.clip = clip
        # buffers, not parameters: in the state_dict (so in every checkpoint), untouched by the optimizer
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, obs: torch.Tensor) -> None:
        """Merge a batch (B, dim) into the statistics with the parallel-variance rule (Chan et al.), which equals
        the statistics of all observations seen at once."""
        n = obs.shape[0]
        if n == 0:
            return
        batch_mean, batch_var = obs.mean(dim=0), obs.var(dim=0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        m2 = self.var * self.count + batch_var * n + delta ** 2 * (self.count * n / total)
        self.mean += delta * (n / total)
        self.var.copy_(m2 / total)
        self.count += n

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs - self.mean) / torch.sqrt(self.var + OBS_NORM_EPS)).clamp(-self.clip, self.clip)


class _GatingActorCritic(nn.Module):
    """Normaliser, trunk, critic and optional cost critic shared by every policy family."""

    def __init__(self, config: RLConfig | Mapping, actor_outputs: int):
        super().__init__()
        config = RLConfig.of(config)  # RL_ACTION_DIM is 1, RL_OBSERVATION_DIM the environment's OBSERVATION_DIM
        obs_dim, hidden_dim = config.RL_OBSERVATION_DIM, config.RL_HIDDEN_DIM
        self.obs_norm = RunningObsNorm(obs_dim, config.RL_OBS_CLIP)
        self.trunk = nn.Sequential(
            layer_init(nn.Linear(obs_dim, hidden_dim)), nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, FEATURE_DIM)), nn.Tanh(),
        )
        self.actor = _head(actor_outputs)
        self.critic = _head(1)
        self.cost_critic = _head(1) if config.RL_CONSTRAINT_MODE == "lagrangian" else None

    def update_obs_norm(self, obs: torch.Tensor) -> None:
        """Fold observations (B, obs_dim) into the running normalisation statistics."""
        self.obs_norm.update(obs)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.obs_norm(obs))  # (B, obs_dim) -> (B, 64)

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.features(obs)).squeeze(-1)  # (B,)

    def get_cost_value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.cost_critic is None:
            raise RuntimeError("the cost critic exists only when RL_CONSTRAINT_MODE is 'lagrangian'")
        return self.cost_critic(self.features(obs)).squeeze(-1)  # (B,)

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None,
                             deterministic: bool = False):
        """-> (action (B,), log_prob (B,), entropy (B,), value (B,)). With `action` given, scores it instead of
        sampling. The returned action is the value its log_prob was taken at (m clamped to [ε, 1 − ε], or a float
        index)."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The gating-policy interface: obs (B, O) -> action (B,): m, or a float index for categorical."""
        return self.get_action_and_value(obs, deterministic=deterministic)[0]


class GatingPolicyAgent(_GatingActorCritic):
    """Beta policy: α, β = softplus(·) + 1 (unimodal, no spikes at the bounds), capped at RL_BETA_CONCENTRATION_MAX.
    Deterministic action = the Beta mean α / (α + β)."""

    def __init__(self, config: RLConfig | Mapping):
        config = RLConfig.of(config)
        super().__init__(config, actor_outputs=2)
        self.concentration_max = config.RL_BETA_CONCENTRATION_MAX

    def _distribution(self, features: torch.Tensor) -> Beta:
        out = self.actor(features)  # (B, 2)
        alpha, beta = (F.softplus(out) + 1.0).clamp(max=self.concentration_max).unbind(dim=-1)
        return Beta(alpha, beta)

    def get_action_and_value(self, obs, action=None, deterministic=False):
        features = self.features(obs)
        dist = self._distribution(features)
        if action is None:
            action = dist.mean if deterministic else dist.sample()
        action = action.clamp(ACTION_EPS, 1.0 - ACTION_EPS)
        return action, dist.log_prob(action), dist.entropy(), self.critic(features).squeeze(-1)


class GaussianGatingPolicyAgent(_GatingActorCritic):
    """m = sigmoid(u), u ~ N(μ(s), σ) with a state-independent log σ. Deterministic action = sigmoid(μ).

    log p(m) = log N(logit m) − log(m(1 − m)) (change of variables through the sigmoid). The entropy of m is
    H[N] + E[log(m(1 − m))], the expectation taken by Gauss–Hermite quadrature: deterministic, and
    differentiable through μ and σ, so the entropy bonus also discourages saturating the sigmoid."""

    def __init__(self, config: RLConfig | Mapping):
        super().__init__(config, actor_outputs=1)
        self.log_std = nn.Parameter(torch.zeros(1))

    def get_action_and_value(self, obs, action=None, deterministic=False):
        features = self.features(obs)
        mu = self.actor(features).squeeze(-1)  # (B,)
        std = self.log_std.exp().expand_as(mu)
        normal = Normal(mu, std)
        if action is None:
            action = torch.sigmoid(mu if deterministic else normal.sample())
        action = action.clamp(ACTION_EPS, 1.0 - ACTION_EPS)
        log_det = torch.log(action * (1.0 - action))
        log_prob = normal.log_prob(torch.logit(action)) - log_det
        entropy = normal.entropy() + self._expected_log_det(mu, std)
        return action, log_prob, entropy, self.critic(features).squeeze(-1)

    @staticmethod
    def _expected_log_det(mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """E over u ~ N(μ, σ) of log sigmoid'(u) = log σ(u) + log σ(−u), per row."""
        nodes = torch.as_tensor(_GH_NODES, dtype=mu.dtype, device=mu.device)
        weights = torch.as_tensor(_GH_WEIGHTS, dtype=mu.dtype, device=mu.device)
        u = mu.unsqueeze(-1) + std.unsqueeze(-1) * nodes  # (B, nodes)
        return ((F.logsigmoid(u) + F.logsigmoid(-u)) * weights).sum(dim=-1)


class CategoricalGatingPolicyAgent(_GatingActorCritic):
    """Categorical over RL_NUM_ACTIONS discrete actions; the environment maps an index to decoding settings.
    Indices travel as floats so every agent shares the trainer's rollout buffers. Deterministic action = argmax."""

    def __init__(self, config: RLConfig | Mapping):
        config = RLConfig.of(config)
        if config.RL_NUM_ACTIONS < 2:
            raise ValueError(f"a categorical policy needs RL_NUM_ACTIONS >= 2, got {config.RL_NUM_ACTIONS}")
        super().__init__(config, actor_outputs=config.RL_NUM_ACTIONS)

    def get_action_and_value(self, obs, action=None, deterministic=False):
        features = self.features(obs)
        dist = Categorical(logits=self.actor(features))
        if action is None:
            action = dist.probs.argmax(dim=-1) if deterministic else dist.sample()
        return action.float(), dist.log_prob(action.long()), dist.entropy(), self.critic(features).squeeze(-1)


AGENT_TYPES = {"beta": GatingPolicyAgent, "gaussian": GaussianGatingPolicyAgent,
               "categorical": CategoricalGatingPolicyAgent}


def create_agent(config: RLConfig | Mapping) -> _GatingActorCritic:
    """The agent named by RL_AGENT_TYPE (RLConfig admits only the AGENT_TYPES)."""
    config = RLConfig.of(config)
    return AGENT_TYPES[config.RL_AGENT_TYPE](config)
