"""Stateful controllers of the PPO trainer (ADR 0005): entropy schedules and the Lagrange
multiplier. Each is a small class with one `step(...)`, a `state_dict()` and a `load_state_dict()`; none of them
reaches into the trainer, the agent or the reward computer: they return the value the trainer should use.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from plugins.tidal.Config import RLConfig


def homeostatic_update(value: float, observed: float, *, target: float, rate: float, decay: float,
                       baseline: float, minimum: float, maximum: float) -> float:
    """One homeostasis step: below target, release `rate · (target − observed)`; then decay toward the baseline;
    then clamp to [minimum, maximum]."""
    if observed < target:
        value += rate * (target - observed)
    value = decay * value + (1.0 - decay) * baseline
    return min(max(value, minimum), maximum)


# ------------------------------------------------------------------------------------------- entropy coefficient
class _EntropySchedule:
    """`coef` is the entropy coefficient to use for the next update; `step(x)` advances it."""

    coef: float

    def step(self, observed: float) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class EntropyHomeostasis(_EntropySchedule):
    """Raises the entropy coefficient while the policy's entropy is below RL_ENTROPY_TARGET_POLICY and lets it
    relax back to the baseline RL_ENTROPY_COEF otherwise."""

    def __init__(self, config: RLConfig | Mapping):
        config = RLConfig.of(config)
        self.baseline = self.coef = config.RL_ENTROPY_COEF
        self.target = config.RL_ENTROPY_TARGET_POLICY
        self.rate = config.RL_ENTROPY_HOMEOSTASIS_RATE
        self.decay = config.RL_ENTROPY_HOMEOSTASIS_DECAY
        self.minimum, self.maximum = config.RL_ENTROPY_COEF_MIN, config.RL_ENTROPY_COEF_MAX

    def step(self, policy_entropy: float) -> float:
        self.coef = homeostatic_update(self.coef, policy_entropy, target=self.target, rate=self.rate,
                                       decay=self.decay, baseline=self.baseline, minimum=self.minimum,
                                       maximum=self.maximum)
        return self.coef


class LinearEntropySchedule(_EntropySchedule):
    """RL_ENTROPY_COEF at iteration 0 → RL_ENTROPY_COEF_FINAL at the last iteration, constant after."""

    def __init__(self, config: RLConfig | Mapping, total_iterations: int):
        config = RLConfig.of(config)
        self.start, self.final = config.RL_ENTROPY_COEF, config.RL_ENTROPY_COEF_FINAL
        self.total_iterations = total_iterations
        self.coef = self.start

    def step(self, iteration: float) -> float:  # an iteration number (a float to match the base class)
        fraction = min(max(iteration / max(self.total_iterations - 1, 1), 0.0), 1.0)
        self.coef = self.start + fraction * (self.final - self.start)
        return self.coef


class ConstantEntropySchedule(_EntropySchedule):
    """RL_ENTROPY_COEF throughout, so no controller can keep the policy noisy once the reward says otherwise."""

    def __init__(self, config: RLConfig | Mapping):
        self.coef = RLConfig.of(config).RL_ENTROPY_COEF

    def step(self, _observed: float) -> float:
        return self.coef


def make_entropy_schedule(config: RLConfig | Mapping, total_iterations: int) -> _EntropySchedule:
    """The schedule named by RL_ENTROPY_SCHEDULE (constant, homeostasis or linear: RLConfig admits no other). All
    expose `coef`; homeostasis steps on the policy entropy, the linear schedule on the iteration number, the constant
    one ignores what it is stepped with."""
    config = RLConfig.of(config)
    if config.RL_ENTROPY_SCHEDULE == "homeostasis":
        return EntropyHomeostasis(config)
    if config.RL_ENTROPY_SCHEDULE == "linear":
        return LinearEntropySchedule(config, total_iterations)
    return ConstantEntropySchedule(config)


# ------------------------------------------------------------------------------------------- PPO-Lagrangian
class LagrangeMultiplier:
    """λ = softplus(raw) ≥ 0, with `raw` trained by its own Adam once per iteration (before the policy update).

    `step(mean_cost)` minimises −λ · (mean_cost − RL_LAGRANGE_COST_LIMIT): λ rises while the mean cost exceeds
    the limit and falls once it is below (the cost is a hinge, never negative, so a limit of 0 would never let
    λ fall; ADR 0005)."""

    def __init__(self, config: RLConfig | Mapping):
        config = RLConfig.of(config)
        init = config.RL_LAGRANGE_MULTIPLIER_INIT  # positive (RLConfig): λ = softplus(raw) > 0
        self.cost_limit = config.RL_LAGRANGE_COST_LIMIT
        self.raw = nn.Parameter(torch.tensor(init + math.log(-math.expm1(-init))))  # softplus⁻¹(init), stable
        self.optimizer = torch.optim.Adam([self.raw], lr=config.RL_LAGRANGE_MULTIPLIER_LR)

    @property
    def value(self) -> float:
        return float(F.softplus(self.raw.detach()))

    def step(self, mean_cost: float) -> float:
        loss = -F.softplus(self.raw) * (mean_cost - self.cost_limit)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return self.value

    def state_dict(self) -> dict:
        """A snapshot: Adam's own state_dict aliases its live moment tensors."""
        return {"raw": self.raw.detach().clone(), "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.raw.copy_(state["raw"])
        self.optimizer.load_state_dict(state["optimizer"])


def combine_advantages(adv_reward: torch.Tensor, adv_cost: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Policy advantage under PPO-Lagrangian: (A_r − λ·A_c) / (1 + λ), scaled so its size does not grow with λ."""
    return (adv_reward - lam * adv_cost) / (1.0 + lam)
