import unittest

import torch

from plugins.tidal.RLControllers import (
    ConstantEntropySchedule,
    EntropyHomeostasis,
    LagrangeMultiplier,
    LinearEntropySchedule,
    combine_advantages,
    homeostatic_update,
    make_entropy_schedule,
)
from plugins.tidal.tests.support import rl_config as shipped_rl_config

# The settings the hand-computed numbers below assume, whatever the shipped config tunes them to.
PINNED = {"RL_ENTROPY_COEF": 0.01, "RL_ENTROPY_TARGET_POLICY": -0.35, "RL_ENTROPY_HOMEOSTASIS_RATE": 0.05,
          "RL_ENTROPY_HOMEOSTASIS_DECAY": 0.95, "RL_ENTROPY_COEF_MIN": 0.01, "RL_ENTROPY_COEF_MAX": 0.5,
          "RL_ENTROPY_COEF_FINAL": 0.001,
          "RL_LAGRANGE_MULTIPLIER_INIT": 1.0, "RL_LAGRANGE_MULTIPLIER_LR": 0.05, "RL_LAGRANGE_COST_LIMIT": 0.01}


def rl_config(**overrides) -> dict:
    return shipped_rl_config(**{**PINNED, **overrides})



class TestHomeostaticRule(unittest.TestCase):
    """Release toward the target when below it, decay toward the baseline, clamp."""

    def test_below_target_releases_then_decays(self):
        value = homeostatic_update(0.01, -0.75, target=-0.35, rate=0.05, decay=0.95, baseline=0.01,
                                   minimum=0.01, maximum=0.5)
        # 0.01 + 0.05 * 0.4 = 0.03; 0.95 * 0.03 + 0.05 * 0.01 = 0.029
        self.assertAlmostEqual(value, 0.029)

    def test_above_target_only_decays(self):
        value = homeostatic_update(0.029, 0.0, target=-0.35, rate=0.05, decay=0.95, baseline=0.01,
                                   minimum=0.01, maximum=0.5)
        self.assertAlmostEqual(value, 0.95 * 0.029 + 0.05 * 0.01)


class TestEntropyHomeostasis(unittest.TestCase):
    def test_starts_at_baseline_and_follows_the_rule_on_hand_computed_numbers(self):
        homeostasis = EntropyHomeostasis(rl_config())
        self.assertAlmostEqual(homeostasis.coef, 0.01)
        self.assertAlmostEqual(homeostasis.step(-0.75), 0.029)
        self.assertAlmostEqual(homeostasis.step(0.0), 0.02805)
        self.assertAlmostEqual(homeostasis.coef, 0.02805)

    def test_a_larger_deficit_gives_a_larger_coefficient(self):
        small, large = EntropyHomeostasis(rl_config()), EntropyHomeostasis(rl_config())
        self.assertGreater(large.step(-2.0), small.step(-0.5))

    def test_coefficient_is_clamped_to_its_range(self):
        high = EntropyHomeostasis(rl_config(RL_ENTROPY_HOMEOSTASIS_RATE=10.0))
        self.assertEqual(high.step(-10.0), 0.5)
        low = EntropyHomeostasis(rl_config(RL_ENTROPY_COEF_MIN=0.02))
        self.assertEqual(low.step(1.0), 0.02)

    def test_returns_to_baseline_once_entropy_is_healthy(self):
        homeostasis = EntropyHomeostasis(rl_config())
        for _ in range(20):
            homeostasis.step(-1.5)
        for _ in range(300):
            homeostasis.step(0.0)
        self.assertAlmostEqual(homeostasis.coef, 0.01, places=6)

    def test_state_dict_round_trip(self):
        homeostasis = EntropyHomeostasis(rl_config())
        homeostasis.step(-1.0)
        restored = EntropyHomeostasis(rl_config())
        restored.load_state_dict(homeostasis.state_dict())
        self.assertEqual(restored.coef, homeostasis.coef)
        self.assertEqual(restored.step(-0.5), homeostasis.step(-0.5))


class TestLinearEntropySchedule(unittest.TestCase):
    def test_runs_from_start_to_final_coefficient(self):
        schedule = LinearEntropySchedule(rl_config(RL_ENTROPY_COEF=0.01, RL_ENTROPY_COEF_FINAL=0.001), 100)
        self.assertAlmostEqual(schedule.step(0), 0.01)
        self.assertAlmostEqual(schedule.step(99), 0.001)
        self.assertAlmostEqual(schedule.step(33), 0.01 + (33 / 99) * (0.001 - 0.01))
        self.assertAlmostEqual(schedule.step(500), 0.001)
        self.assertAlmostEqual(schedule.coef, 0.001)

    def test_state_dict_round_trip(self):
        schedule = LinearEntropySchedule(rl_config(), 10)
        schedule.step(4)
        restored = LinearEntropySchedule(rl_config(), 10)
        restored.load_state_dict(schedule.state_dict())
        self.assertEqual(restored.coef, schedule.coef)

    def test_constant_schedule_keeps_the_coefficient_whatever_it_is_stepped_with(self):
        schedule = ConstantEntropySchedule(rl_config(RL_ENTROPY_COEF=0.003))
        self.assertEqual(schedule.coef, 0.003)
        for argument in (-5.0, 0, 99, 1e6):
            self.assertEqual(schedule.step(argument), 0.003)
        restored = ConstantEntropySchedule(rl_config(RL_ENTROPY_COEF=0.003))
        restored.load_state_dict(schedule.state_dict())
        self.assertEqual(restored.coef, 0.003)

    def test_factory_picks_the_configured_schedule(self):
        self.assertIsInstance(make_entropy_schedule(rl_config(RL_ENTROPY_SCHEDULE="homeostasis"), 10),
                              EntropyHomeostasis)
        self.assertIsInstance(make_entropy_schedule(rl_config(RL_ENTROPY_SCHEDULE="linear"), 10),
                              LinearEntropySchedule)
        self.assertIsInstance(make_entropy_schedule(rl_config(RL_ENTROPY_SCHEDULE="constant"), 10),
                              ConstantEntropySchedule)
        with self.assertRaises(ValueError) as ctx:
            make_entropy_schedule(rl_config(RL_ENTROPY_SCHEDULE="cosine"), 10)
        self.assertIn("homeostasis", str(ctx.exception))
        self.assertIn("constant", str(ctx.exception))


class TestLagrangeMultiplier(unittest.TestCase):
    def test_starts_at_the_configured_value(self):
        self.assertAlmostEqual(LagrangeMultiplier(rl_config()).value, 1.0, places=6)
        self.assertAlmostEqual(LagrangeMultiplier(rl_config(RL_LAGRANGE_MULTIPLIER_INIT=3.0)).value, 3.0, places=5)

    def test_uses_its_own_adam_with_the_configured_learning_rate(self):
        multiplier = LagrangeMultiplier(rl_config(RL_LAGRANGE_MULTIPLIER_LR=0.1))
        self.assertIsInstance(multiplier.optimizer, torch.optim.Adam)
        self.assertEqual(multiplier.optimizer.param_groups[0]["lr"], 0.1)

    def test_rises_while_the_constraint_is_violated(self):
        multiplier = LagrangeMultiplier(rl_config())
        values = [multiplier.step(0.3) for _ in range(5)]
        self.assertGreater(values[0], 1.0)
        self.assertEqual(values, sorted(values))

    def test_falls_once_the_cost_is_zero(self):
        multiplier = LagrangeMultiplier(rl_config())
        values = [multiplier.step(0.0) for _ in range(5)]
        self.assertLess(values[0], 1.0)
        self.assertEqual(values, sorted(values, reverse=True))
        self.assertGreater(values[-1], 0.0)

    def test_state_dict_round_trip_keeps_value_and_optimizer_moments(self):
        multiplier = LagrangeMultiplier(rl_config())
        for cost in (0.3, 0.2, 0.0):
            multiplier.step(cost)
        restored = LagrangeMultiplier(rl_config())
        restored.load_state_dict(multiplier.state_dict())
        self.assertEqual(restored.value, multiplier.value)
        self.assertEqual(restored.step(0.1), multiplier.step(0.1))

    def test_rejects_a_non_positive_initial_value(self):
        with self.assertRaises(ValueError):
            LagrangeMultiplier(rl_config(RL_LAGRANGE_MULTIPLIER_INIT=0.0))


class TestCombineAdvantages(unittest.TestCase):
    def test_reward_minus_lambda_cost_over_one_plus_lambda(self):
        combined = combine_advantages(torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0]), 1.0)
        torch.testing.assert_close(combined, torch.tensor([0.25, 1.5]))

    def test_zero_lambda_leaves_reward_advantages_unchanged(self):
        adv = torch.randn(5)
        torch.testing.assert_close(combine_advantages(adv, torch.randn(5), 0.0), adv)


if __name__ == "__main__":
    unittest.main()
