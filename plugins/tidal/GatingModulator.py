"""Action spaces of the gating controller: an action per row -> `SamplingParams` (ADR 0015).

`GatingModulator` is the seed's single modulation: m ∈ [0, 1] runs from conservative (cool, narrow, tight) to
exploratory (hot, wide, loose), each parameter a linear map of m between two configured ends. The ends are free, so a
mapping with no repetition penalty (1.0) and with min-p truncation is expressible; the penalty applies to the last
RL_REPETITION_PENALTY_WINDOW tokens, not to every token of the prompt.

`ResidualActionSpace` is the factored, discrete alternative: action a indexes a grid of temperature factors × min-p
factors × repetition penalties around a fixed base decoder (the best one found on the dev prompts), with index 0 the
base itself. "No change" is therefore that decoder, and any gain must come from reacting to the state.

Both are batched: (B,) actions give (B,) parameters. `FixedGatingPolicy` and `RandomGatingPolicy` are the constant
and random baselines over either space.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch

from plugins.tidal.Config import RLConfig
from plugins.tidal.Decoding import SamplingParams


class GatingModulator:
    """`modulator(m)` maps m of shape (B,) or (B, 1) to `SamplingParams` on m's device."""
    kind = "continuous"

    def __init__(self, config: RLConfig | Mapping):
        config = RLConfig.of(config)
        self.base_temperature = config.RL_BASE_TEMPERATURE
        self.base_repetition_penalty = config.RL_BASE_REPETITION_PENALTY
        self.ranges = {
            "temperature": (config.RL_MODULATION_TEMP_MIN, config.RL_MODULATION_TEMP_MAX),
            "repetition_penalty": (config.RL_MODULATION_PENALTY_MIN, config.RL_MODULATION_PENALTY_MAX),
            "top_k": (config.RL_MODULATION_TOP_K_MIN, config.RL_MODULATION_TOP_K_MAX),
            "top_p": (config.RL_MODULATION_TOP_P_MIN, config.RL_MODULATION_TOP_P_MAX),
            "min_p": (config.RL_MODULATION_MIN_P_MIN, config.RL_MODULATION_MIN_P_MAX),
        }
        self.penalty_window = config.RL_REPETITION_PENALTY_WINDOW

    def __call__(self, m: torch.Tensor) -> SamplingParams:
        if m.dim() == 2 and m.shape[1] == 1:
            m = m.squeeze(1)  # (B, 1) -> (B,)
        if m.dim() != 1:
            raise ValueError(f"modulation must have shape (B,) or (B, 1), got {tuple(m.shape)}")
        m = m.float().clamp(0.0, 1.0)

        def lerp(name):
            lo, hi = self.ranges[name]
            return lo + m * (hi - lo)

        return SamplingParams(
            temperature=self.base_temperature * lerp("temperature"),
            top_k=torch.round(lerp("top_k")).long(),  # half to even: 52.5 -> 52
            top_p=lerp("top_p"),
            min_p=lerp("min_p"),
            repetition_penalty=self.base_repetition_penalty * lerp("repetition_penalty"),
            penalty_window=self.penalty_window,
        )

    def constant_actions(self, points: int) -> list[float]:
        """The grid of constant m the study plays (0.5 always included)."""
        return sorted({round(i / (points - 1), 10) for i in range(points)} | {0.5}) if points > 1 else [0.5]

    def describe(self) -> dict:
        return {"action_mode": "modulation", "base_temperature": self.base_temperature,
                "base_repetition_penalty": self.base_repetition_penalty,
                **{f"{name}_range": list(r) for name, r in self.ranges.items()}, "penalty_window": self.penalty_window}


class ResidualActionSpace:
    """Discrete action a ∈ [0, num_actions) -> the base decoder's parameters with temperature × factor, min-p × factor
    and a repetition penalty, all read from one table. Index 0 is the base decoder unchanged."""
    kind = "discrete"

    def __init__(self, config: RLConfig | Mapping, base: dict):
        config = RLConfig.of(config)
        self.base = {"temperature": float(base["temperature"]), "min_p": float(base.get("min_p", 0.0)),
                     "top_k": int(base.get("top_k", 0)), "top_p": float(base.get("top_p", 1.0))}
        temps = config.RL_RESIDUAL_TEMPERATURE_FACTORS
        min_ps = config.RL_RESIDUAL_MIN_P_FACTORS
        penalties = config.RL_RESIDUAL_PENALTIES
        if temps[0] != 1.0 or min_ps[0] != 1.0 or penalties[0] != 1.0:
            raise ValueError("the first residual factor of each list must be 1.0, so action 0 is the base decoder")
        self.table = list(itertools.product(temps, min_ps, penalties))
        self.penalty_window = config.RL_REPETITION_PENALTY_WINDOW
        rows = torch.tensor(self.table, dtype=torch.float32)  # (A, 3)
        self._temperature = rows[:, 0] * self.base["temperature"]
        self._min_p = (rows[:, 1] * self.base["min_p"]).clamp(max=0.99)
        self._penalty = rows[:, 2]

    @property
    def num_actions(self) -> int:
        return len(self.table)

    def __call__(self, action: torch.Tensor) -> SamplingParams:
        a = action.reshape(-1).round().long().clamp(0, self.num_actions - 1)
        dev = a.device
        B = a.shape[0]
        return SamplingParams(
            temperature=self._temperature.to(dev)[a], top_k=torch.full((B,), self.base["top_k"], device=dev),
            top_p=torch.full((B,), self.base["top_p"], device=dev), min_p=self._min_p.to(dev)[a],
            repetition_penalty=self._penalty.to(dev)[a], penalty_window=self.penalty_window)

    def constant_actions(self, points: int | None = None) -> list[float]:
        """Every action of the grid (the study plays each as a constant)."""
        return [float(a) for a in range(self.num_actions)]

    def describe(self) -> dict:
        return {"action_mode": "residual", "base": dict(self.base), "num_actions": self.num_actions,
                "table": [list(row) for row in self.table], "penalty_window": self.penalty_window}


def make_action_space(config: RLConfig | Mapping, base: dict | None = None) -> GatingModulator | ResidualActionSpace:
    """The action space RL_ACTION_MODE names; `residual` needs the base decoder (from the dev sweep or a checkpoint)."""
    config = RLConfig.of(config)  # RL_ACTION_MODE is modulation or residual
    if config.RL_ACTION_MODE == "modulation":
        return GatingModulator(config)
    if base is None:
        raise ValueError("the residual action space needs its base decoder (chosen on the dev prompts)")
    space = ResidualActionSpace(config, base)
    if config.RL_AGENT_TYPE == "categorical" and config.RL_NUM_ACTIONS != space.num_actions:
        raise ValueError(f"RL_NUM_ACTIONS is {config.RL_NUM_ACTIONS} but the residual lists make "
                         f"{space.num_actions} actions; set RL_NUM_ACTIONS: {space.num_actions}")
    return space


# ------------------------------------------------------------------------------------------- baseline policies
class RandomGatingPolicy:
    """A uniform random action per row (m ~ U(0, 1), or a uniform index for a discrete space), from its own
    generator so it never disturbs (or depends on) the global RNG. `deterministic` is ignored."""

    def __init__(self, seed: int | None = None, num_actions: int | None = None):
        self.generator = torch.Generator()
        self.num_actions = num_actions
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if self.num_actions:
            a = torch.randint(self.num_actions, (obs.shape[0],), generator=self.generator).float()
        else:
            a = torch.rand(obs.shape[0], generator=self.generator)  # drawn on CPU: the same stream on every device
        return a.to(obs.device)


class FixedGatingPolicy:
    """The same action for every row and every step."""

    def __init__(self, action: float):
        self.action = float(action)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return torch.full((obs.shape[0],), self.action, device=obs.device)
