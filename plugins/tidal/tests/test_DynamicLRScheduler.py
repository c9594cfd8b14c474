"""Warmup + cosine schedule: linear warmup to BASE_LR, cosine to MIN_LR, clamped (never rises again)."""
import itertools
import math
import unittest

import torch

from plugins.tidal.DynamicLRScheduler import DynamicLRScheduler
from plugins.tidal.tests.support import base_config


def schedule_config(**settings) -> dict:
    """The base config with these LEARNING_RATE_SCHEDULER settings."""
    return base_config(LEARNING_RATE_SCHEDULER=settings)


CONFIG = schedule_config(WARMUP_RATIO=0.1, BASE_LR=1e-3, MIN_LR=1e-6)


def make(total=100):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    return opt, DynamicLRScheduler(opt, CONFIG, total)


class TestDynamicLRScheduler(unittest.TestCase):
    def test_first_step_uses_warmup_lr_not_the_optimizer_default(self):
        opt, sched = make()
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 1e-3 * 1 / 10)

    def test_linear_warmup_reaches_base_lr(self):
        opt, sched = make()
        lrs = []
        for _ in range(10):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        self.assertEqual(lrs, [1e-3 * (i + 1) / 10 for i in range(10)])
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 1e-3)

    def test_cosine_midpoint_and_end(self):
        opt, sched = make(total=110)  # 11 warmup steps, 99 cosine steps
        for _ in range(11 + 99 // 2):
            sched.step()
        mid = 1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * (99 // 2) / 99))
        self.assertAlmostEqual(opt.param_groups[0]["lr"], mid, places=9)
        for _ in range(200):
            sched.step()
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 1e-6, places=12)

    def test_never_rises_after_the_end(self):
        opt, sched = make()
        seen = []
        for _ in range(300):
            sched.step()
            seen.append(opt.param_groups[0]["lr"])
        after_peak = seen[9:]
        self.assertTrue(all(b <= a + 1e-15 for a, b in itertools.pairwise(after_peak)))

    def test_state_dict_round_trip(self):
        opt, sched = make()
        for _ in range(37):
            sched.step()
        opt2, sched2 = make()
        sched2.load_state_dict(sched.state_dict())
        self.assertEqual(opt2.param_groups[0]["lr"], opt.param_groups[0]["lr"])
        self.assertEqual(sched2.current_step, 37)

    def test_zero_warmup(self):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        DynamicLRScheduler(opt, schedule_config(WARMUP_RATIO=0.0, BASE_LR=0.5, MIN_LR=0.0), 10)
        self.assertAlmostEqual(opt.param_groups[0]["lr"], 0.5)

    def test_invalid_settings_raise(self):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        for bad in ({"WARMUP_RATIO": 1.5, "BASE_LR": 1e-3, "MIN_LR": 0.0},
                    {"WARMUP_RATIO": 0.1, "BASE_LR": 1e-3, "MIN_LR": 1e-2}):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                DynamicLRScheduler(opt, schedule_config(**bad), 10)


if __name__ == "__main__":
    unittest.main()
