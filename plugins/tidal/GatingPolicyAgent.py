"""Actor-critic for the gating policy, in the style of CleanRL's `ppo_continuous_action.py` (SPEC §7).

obs (B, 64) → LayerNorm → Linear(64, 128) → tanh → Linear(128, 64) → tanh → features (B, 64), shared by
  actor    64 → 32 → 2   Beta(α, β) over m ∈ [0, 1]   (or 64 → 32 → 1: the mean of a sigmoid-squashed Normal)
  critic   64 → 32 → 1   V(s)
  cost     64 → 32 → 1   V_c(s), only when RL_CONSTRAINT_MODE == "lagrangian"
Actions are one value per row, shape (B,).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Beta, Normal

FEATURE_DIM = 64      # trunk output width (SPEC §7)
HEAD_HIDDEN_DIM = 32  # hidden width of every head (SPEC §7)
ACTION_EPS = 1e-6     # actions are clamped to [ε, 1 − ε] so log-probabilities stay finite at the bounds

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


class _GatingActorCritic(nn.Module):
    """Trunk, critic and optional cost critic shared by both policy families."""

    def __init__(self, config: dict, actor_outputs: int):
        super().__init__()
        if config["RL_ACTION_DIM"] != 1:
            raise ValueError("the gating agent controls one modulation value: RL_ACTION_DIM must be 1")
        obs_dim, hidden_dim = config["RL_OBSERVATION_DIM"], config["RL_HIDDEN_DIM"]
        self.trunk = nn.Sequential(
            nn.LayerNorm(obs_dim),
            layer_init(nn.Linear(obs_dim, hidden_dim)), nn.Tanh(),
            layer_init(nn.Linear(hidden_dim, FEATURE_DIM)), nn.Tanh(),
        )
        self.actor = _head(actor_outputs)
        self.critic = _head(1)
        self.cost_critic = _head(1) if config["RL_CONSTRAINT_MODE"] == "lagrangian" else None

    def get_value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(self.trunk(obs)).squeeze(-1)  # (B,)

    def get_cost_value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.cost_critic is None:
            raise RuntimeError("the cost critic exists only when RL_CONSTRAINT_MODE is 'lagrangian'")
        return self.cost_critic(self.trunk(obs)).squeeze(-1)  # (B,)

    def get_action_and_value(self, obs: torch.Tensor, action: torch.Tensor | None = None,
                             deterministic: bool = False):
        """-> (action (B,), log_prob (B,), entropy (B,), value (B,)). With `action` given, scores it instead of
        sampling. The returned action is clamped to [ε, 1 − ε], the value its log_prob was taken at."""
        raise NotImplementedError

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """The gating-policy interface: obs (B, 64) -> m (B,)."""
        return self.get_action_and_value(obs, deterministic=deterministic)[0]


class GatingPolicyAgent(_GatingActorCritic):
    """Beta policy: α, β = softplus(·) + 1 (unimodal, no spikes at the bounds), capped at RL_BETA_CONCENTRATION_MAX.
    Deterministic action = the Beta mean α / (α + β)."""

    def __init__(self, config: dict):
        super().__init__(config, actor_outputs=2)
        self.concentration_max = config["RL_BETA_CONCENTRATION_MAX"]

    def distribution(self, obs: torch.Tensor) -> Beta:
        return self._distribution(self.trunk(obs))

    def _distribution(self, features: torch.Tensor) -> Beta:
        out = self.actor(features)  # (B, 2)
        alpha, beta = (F.softplus(out) + 1.0).clamp(max=self.concentration_max).unbind(dim=-1)
        return Beta(alpha, beta)

    def get_action_and_value(self, obs, action=None, deterministic=False):
        features = self.trunk(obs)
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

    def __init__(self, config: dict):
        super().__init__(config, actor_outputs=1)
        self.log_std = nn.Parameter(torch.zeros(1))

    def get_action_and_value(self, obs, action=None, deterministic=False):
        features = self.trunk(obs)
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


AGENT_TYPES = {"beta": GatingPolicyAgent, "gaussian": GaussianGatingPolicyAgent}


def create_agent(config: dict) -> _GatingActorCritic:
    """The agent named by RL_AGENT_TYPE."""
    kind = config["RL_AGENT_TYPE"]
    if kind not in AGENT_TYPES:
        raise ValueError(f"RL_AGENT_TYPE must be one of {', '.join(map(repr, AGENT_TYPES))}; got {kind!r}")
    return AGENT_TYPES[kind](config)
