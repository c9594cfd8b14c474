"""Learning-rate schedule: linear warmup to BASE_LR, then cosine decay to MIN_LR, clamped there (never rises again).

Stepped once per optimizer step. The rate for optimizer step s (0-based) is set before that step runs, so the very
first update already uses the warmup rate rather than the optimizer's constructor value.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from plugins.tidal.Config import LMConfig


class DynamicLRScheduler:
    def __init__(self, optimizer: torch.optim.Optimizer, config: LMConfig | Mapping, total_steps: int):
        settings = LMConfig.of(config).LEARNING_RATE_SCHEDULER  # validated: 0 <= WARMUP_RATIO < 1, MIN_LR <= BASE_LR
        self.base_lr = settings.BASE_LR
        self.min_lr = settings.MIN_LR
        ratio = settings.WARMUP_RATIO
        self.optimizer = optimizer
        self.total_steps = max(1, int(total_steps))
        self.warmup_ratio = ratio
        self.warmup_steps = int(self.total_steps * ratio)
        self.current_step = 0
        self._apply()

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self) -> None:
        lr = self.lr_at(self.current_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def get_last_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self) -> None:
        self.current_step += 1
        self._apply()

    def set_total_steps(self, total_steps: int) -> None:
        """Rebuild the schedule for a new horizon, as a fresh one of that length would be, at the current position."""
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = int(self.total_steps * self.warmup_ratio)
        self._apply()

    def state_dict(self) -> dict:
        return {"current_step": self.current_step, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}

    def load_state_dict(self, state: dict) -> None:
        self.current_step = int(state["current_step"])
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self._apply()
