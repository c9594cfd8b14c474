"""Action spaces: the seed's single modulation m (configurable ends, min-p and no penalty reachable, a penalty
window) and the residual grid around a base decoder (action 0 = the base); the baseline policies."""
import unittest

import torch

from plugins.tidal.GatingEnvironment import OBSERVATION_DIM
from plugins.tidal.GatingModulator import (
    FixedGatingPolicy,
    GatingModulator,
    RandomGatingPolicy,
    ResidualActionSpace,
    make_action_space,
)
from plugins.tidal.tests.support import rl_config

MAPPING = dict(RL_BASE_TEMPERATURE=1.0, RL_MODULATION_TEMP_MIN=0.3, RL_MODULATION_TEMP_MAX=2.0,
               RL_BASE_REPETITION_PENALTY=1.0, RL_MODULATION_PENALTY_MIN=1.0, RL_MODULATION_PENALTY_MAX=1.5,
               RL_MODULATION_TOP_K_MIN=5, RL_MODULATION_TOP_K_MAX=100, RL_MODULATION_TOP_P_MIN=0.7,
               RL_MODULATION_TOP_P_MAX=1.0, RL_MODULATION_MIN_P_MIN=0.2, RL_MODULATION_MIN_P_MAX=0.0,
               RL_REPETITION_PENALTY_WINDOW=16)


class TestGatingModulator(unittest.TestCase):
    def setUp(self):
        self.modulator = GatingModulator(rl_config(**MAPPING))

    def test_each_parameter_is_a_linear_map_of_m_between_its_ends(self):
        p = self.modulator(torch.tensor([0.0, 0.5, 1.0]))
        torch.testing.assert_close(p.temperature, torch.tensor([0.3, 1.15, 2.0]))
        torch.testing.assert_close(p.repetition_penalty, torch.tensor([1.0, 1.25, 1.5]))
        self.assertEqual(p.top_k.tolist(), [5, 52, 100])  # 52.5 rounds half to even
        torch.testing.assert_close(p.top_p, torch.tensor([0.7, 0.85, 1.0]))
        torch.testing.assert_close(p.min_p, torch.tensor([0.2, 0.1, 0.0]))
        self.assertEqual(p.penalty_window, 16)

    def test_no_penalty_and_min_p_truncation_are_reachable(self):
        p = self.modulator(torch.tensor([0.0]))
        self.assertEqual(float(p.repetition_penalty[0]), 1.0)
        self.assertGreater(float(p.min_p[0]), 0.0)

    def test_column_input_clamping_and_bad_shapes(self):
        p = self.modulator(torch.tensor([[-1.0], [2.0]]))
        torch.testing.assert_close(p.temperature, torch.tensor([0.3, 2.0]))
        with self.assertRaises(ValueError):
            self.modulator(torch.zeros(2, 2))

    def test_row_gives_python_numbers(self):
        row = self.modulator(torch.tensor([0.5])).row(0)
        self.assertEqual(row["top_k"], 52)
        self.assertIsInstance(row["temperature"], float)


class TestResidualActionSpace(unittest.TestCase):
    def setUp(self):
        self.config = rl_config(RL_RESIDUAL_TEMPERATURE_FACTORS=[1.0, 0.7, 1.3], RL_RESIDUAL_MIN_P_FACTORS=[1.0, 2.0],
                                RL_RESIDUAL_PENALTIES=[1.0, 1.3], RL_REPETITION_PENALTY_WINDOW=8)
        self.space = ResidualActionSpace(self.config, {"temperature": 0.9, "min_p": 0.1})

    def test_action_zero_is_the_base_decoder(self):
        row = self.space(torch.tensor([0.0])).row(0)
        expected = {"temperature": 0.9, "top_k": 0, "top_p": 1.0, "min_p": 0.1, "repetition_penalty": 1.0}
        self.assertEqual(set(row), set(expected))
        for key, value in expected.items():
            self.assertAlmostEqual(row[key], value, places=6, msg=key)

    def test_every_combination_is_one_action(self):
        self.assertEqual(self.space.num_actions, 3 * 2 * 2)
        p = self.space(torch.arange(12).float())
        combos = {(round(float(t), 4), round(float(m), 4), round(float(r), 4))
                  for t, m, r in zip(p.temperature, p.min_p, p.repetition_penalty, strict=True)}
        self.assertEqual(len(combos), 12)
        self.assertEqual(self.space.constant_actions(), [float(a) for a in range(12)])

    def test_the_first_factor_must_be_one(self):
        with self.assertRaisesRegex(ValueError, "action 0 is the base"):
            ResidualActionSpace({**self.config, "RL_RESIDUAL_PENALTIES": [1.3, 1.0]}, {"temperature": 1.0})

    def test_make_action_space_follows_the_mode(self):
        self.assertIsInstance(make_action_space(rl_config(RL_ACTION_MODE="modulation")), GatingModulator)
        with self.assertRaisesRegex(ValueError, "base decoder"):
            make_action_space(rl_config(RL_ACTION_MODE="residual"))
        with self.assertRaisesRegex(ValueError, "RL_ACTION_MODE"):
            make_action_space(rl_config(RL_ACTION_MODE="nope"))
        with self.assertRaisesRegex(ValueError, "set RL_NUM_ACTIONS: 12"):
            make_action_space({**self.config, "RL_ACTION_MODE": "residual", "RL_AGENT_TYPE": "categorical",
                               "RL_NUM_ACTIONS": 5}, {"temperature": 1.0})


class TestBaselinePolicies(unittest.TestCase):
    def test_random_policy_is_reproducible_by_seed_and_leaves_the_global_rng_alone(self):
        obs = torch.zeros(1000, OBSERVATION_DIM)
        torch.manual_seed(0)
        before = torch.rand(1)
        torch.manual_seed(0)
        a = RandomGatingPolicy(seed=3).act(obs)
        self.assertEqual(torch.rand(1).item(), before.item())
        self.assertTrue(torch.equal(a, RandomGatingPolicy(seed=3).act(obs)))
        self.assertAlmostEqual(float(a.mean()), 0.5, delta=0.05)
        index = RandomGatingPolicy(seed=3, num_actions=4).act(obs)
        self.assertEqual(sorted(set(index.tolist())), [0.0, 1.0, 2.0, 3.0])

    def test_fixed_policy_returns_its_constant(self):
        self.assertEqual(FixedGatingPolicy(7).act(torch.zeros(3, OBSERVATION_DIM)).tolist(), [7.0] * 3)


if __name__ == "__main__":
    unittest.main()
