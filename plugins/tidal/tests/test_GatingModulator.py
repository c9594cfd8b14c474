import unittest

import torch

from plugins.tidal.GatingModulator import (FixedGatingPolicy, GatingEffects, GatingModulator, NeutralGatingPolicy,
                                           RandomGatingPolicy, effects_dict)
from tests.support import rl_config



class TestModulatorValues(unittest.TestCase):
    """The SPEC §7 mapping at the end points and the middle, with the shipped defaults."""

    def setUp(self):
        self.effects = GatingModulator(rl_config())(torch.tensor([0.0, 0.5, 1.0]))

    def test_temperature_is_0_3_then_1_15_then_2_0(self):
        torch.testing.assert_close(self.effects.temperature, torch.tensor([0.3, 1.15, 2.0]))

    def test_repetition_penalty_is_1_2_then_2_7_then_4_2(self):
        torch.testing.assert_close(self.effects.repetition_penalty, torch.tensor([1.2, 2.7, 4.2]))

    def test_top_k_rounds_half_to_even_so_m_half_gives_52(self):
        # 5 + 0.5 * 95 = 52.5; torch.round rounds half to even -> 52.
        self.assertEqual(self.effects.top_k.tolist(), [5, 52, 100])
        self.assertEqual(self.effects.top_k.dtype, torch.long)

    def test_top_p_is_0_7_then_0_85_then_1_0(self):
        torch.testing.assert_close(self.effects.top_p, torch.tensor([0.7, 0.85, 1.0]))

    def test_base_values_scale_temperature_and_penalty(self):
        effects = GatingModulator(rl_config(RL_BASE_TEMPERATURE=2.0, RL_BASE_REPETITION_PENALTY=2.0))(
            torch.tensor([0.0]))
        self.assertAlmostEqual(effects.temperature.item(), 0.6, places=6)
        self.assertAlmostEqual(effects.repetition_penalty.item(), 2.0, places=6)


class TestModulatorShapeAndRange(unittest.TestCase):
    def setUp(self):
        self.modulator = GatingModulator(rl_config())

    def test_all_four_parameters_rise_monotonically_with_m(self):
        m = torch.linspace(0, 1, 101)
        effects = self.modulator(m)
        for name in ("temperature", "repetition_penalty", "top_k", "top_p"):
            values = getattr(effects, name)
            self.assertTrue(bool((values[1:] >= values[:-1]).all()), name)
            self.assertGreater(values[-1].item(), values[0].item(), name)

    def test_column_input_gives_flat_batch_outputs(self):
        effects = self.modulator(torch.rand(7, 1))
        self.assertIsInstance(effects, GatingEffects)
        for name in ("temperature", "repetition_penalty", "top_k", "top_p"):
            self.assertEqual(getattr(effects, name).shape, (7,), name)

    def test_m_outside_unit_interval_is_clamped(self):
        effects = self.modulator(torch.tensor([-0.5, 1.5]))
        self.assertEqual(effects.top_k.tolist(), [5, 100])
        torch.testing.assert_close(effects.temperature, torch.tensor([0.3, 2.0]))

    def test_bad_shape_is_rejected(self):
        with self.assertRaises(ValueError):
            self.modulator(torch.rand(3, 2))

    def test_effects_dict_gives_python_numbers_for_one_row(self):
        effects = self.modulator(torch.tensor([0.0, 1.0]))
        row = effects_dict(effects, 1)
        self.assertEqual(set(row), {"temperature", "repetition_penalty", "top_k", "top_p"})
        self.assertIsInstance(row["top_k"], int)
        self.assertEqual(row["top_k"], 100)
        for name in ("temperature", "repetition_penalty", "top_p"):
            self.assertIsInstance(row[name], float)
        self.assertAlmostEqual(row["temperature"], 2.0, places=6)
        self.assertEqual(GatingModulator.effects_dict(effects, 0)["top_k"], 5)


class TestBaselinePolicies(unittest.TestCase):
    obs = torch.zeros(6, 64)

    def test_random_policy_is_uniform_per_row_and_reproducible_by_seed(self):
        a = RandomGatingPolicy(seed=3).act(self.obs)
        b = RandomGatingPolicy(seed=3).act(self.obs)
        self.assertEqual(a.shape, (6,))
        self.assertTrue(bool(((a >= 0) & (a <= 1)).all()))
        torch.testing.assert_close(a, b)
        self.assertGreater(a.unique().numel(), 1)

    def test_random_policy_uses_its_own_generator_not_the_global_one(self):
        torch.manual_seed(0)
        before = torch.rand(1)
        torch.manual_seed(0)
        RandomGatingPolicy(seed=1).act(self.obs)
        self.assertEqual(torch.rand(1).item(), before.item())

    def test_fixed_policy_returns_its_constant(self):
        torch.testing.assert_close(FixedGatingPolicy(0.7).act(self.obs), torch.full((6,), 0.7))

    def test_fixed_policy_rejects_m_outside_unit_interval(self):
        with self.assertRaises(ValueError):
            FixedGatingPolicy(1.2)

    def test_neutral_policy_is_one_half(self):
        torch.testing.assert_close(NeutralGatingPolicy().act(self.obs, deterministic=True), torch.full((6,), 0.5))


if __name__ == "__main__":
    unittest.main()
