"""Modulation m ∈ [0, 1] → sampling parameters (SPEC §7), plus the baseline gating policies.

m runs from conservative (0: cool, narrow, tight) to exploratory (1: hot, wide, loose); all four parameters rise
linearly with it. Everything is batched: a (B,) vector of m gives (B,) vectors of parameters, so N environments are
modulated in one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class GatingEffects:
    """Per-row sampling parameters; every field has shape (B,)."""
    temperature: torch.Tensor
    repetition_penalty: torch.Tensor
    top_k: torch.Tensor  # long
    top_p: torch.Tensor


def effects_dict(effects: GatingEffects, i: int) -> dict:
    """Row `i` as plain Python numbers, the shape trajectories store."""
    return {
        "temperature": float(effects.temperature[i]),
        "repetition_penalty": float(effects.repetition_penalty[i]),
        "top_k": int(effects.top_k[i]),
        "top_p": float(effects.top_p[i]),
    }


class GatingModulator:
    """`modulator(m)` maps m of shape (B,) or (B, 1) to `GatingEffects` on m's device."""

    effects_dict = staticmethod(effects_dict)

    def __init__(self, config: dict):
        self.base_temperature = config["RL_BASE_TEMPERATURE"]
        self.base_repetition_penalty = config["RL_BASE_REPETITION_PENALTY"]
        self.temperature_range = (config["RL_MODULATION_TEMP_MIN"], config["RL_MODULATION_TEMP_MAX"])
        self.penalty_range = (config["RL_MODULATION_PENALTY_MIN"], config["RL_MODULATION_PENALTY_MAX"])
        self.top_k_range = (config["RL_MODULATION_TOP_K_MIN"], config["RL_MODULATION_TOP_K_MAX"])
        self.top_p_range = (config["RL_MODULATION_TOP_P_MIN"], config["RL_MODULATION_TOP_P_MAX"])

    def __call__(self, m: torch.Tensor) -> GatingEffects:
        if m.dim() == 2 and m.shape[1] == 1:
            m = m.squeeze(1)  # (B, 1) -> (B,)
        if m.dim() != 1:
            raise ValueError(f"modulation must have shape (B,) or (B, 1), got {tuple(m.shape)}")
        if not m.is_floating_point():
            m = m.float()
        m = m.clamp(0.0, 1.0)

        def lerp(lo_hi):
            lo, hi = lo_hi
            return lo + m * (hi - lo)

        return GatingEffects(
            temperature=self.base_temperature * lerp(self.temperature_range),
            repetition_penalty=self.base_repetition_penalty * lerp(self.penalty_range),
            top_k=torch.round(lerp(self.top_k_range)).long(),  # half to even: 52.5 -> 52
            top_p=lerp(self.top_p_range),
        )


# ------------------------------------------------------------------------------------------- baseline policies
class GatingPolicy(Protocol):
    """What the generator, the environment and the ablation need from any policy, learned or not."""

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """obs (B, RL_OBSERVATION_DIM) -> m (B,) in [0, 1]."""


class RandomGatingPolicy:
    """m ~ U(0, 1) independently per row, from its own generator so it never disturbs (or depends on) the global
    RNG. `deterministic` is ignored: a random baseline stays random."""

    def __init__(self, seed: int | None = None):
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        m = torch.rand(obs.shape[0], generator=self.generator)  # drawn on CPU: the same stream on every device
        return m.to(obs.device)


class FixedGatingPolicy:
    """The same m for every row and every step."""

    def __init__(self, m: float):
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"fixed modulation must lie in [0, 1], got {m}")
        self.m = float(m)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.full((obs.shape[0],), self.m, device=obs.device)


class NeutralGatingPolicy(FixedGatingPolicy):
    """m = 0.5, the midpoint of the conservative–exploratory axis."""

    def __init__(self):
        super().__init__(0.5)
