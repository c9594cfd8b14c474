import math
import unittest

import torch
import torch.nn.functional as F
from torch.distributions import Beta, Normal

from plugins.tidal.GatingPolicyAgent import GatingPolicyAgent, GaussianGatingPolicyAgent, create_agent
from tests.support import rl_config



class TestBetaAgent(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.agent = GatingPolicyAgent(rl_config())
        self.obs = torch.randn(8, 64)

    def test_output_shapes_are_flat_batches(self):
        action, log_prob, entropy, value = self.agent.get_action_and_value(self.obs)
        for t in (action, log_prob, entropy, value):
            self.assertEqual(t.shape, (8,))
        self.assertEqual(self.agent.get_value(self.obs).shape, (8,))
        self.assertEqual(self.agent.act(self.obs).shape, (8,))

    def test_sampled_actions_lie_strictly_inside_the_unit_interval(self):
        actions = self.agent.act(torch.randn(4096, 64))
        self.assertTrue(bool(((actions > 0) & (actions < 1)).all()))

    def test_deterministic_action_is_the_beta_mean(self):
        dist = self.agent.distribution(self.obs)
        expected = dist.concentration1 / (dist.concentration1 + dist.concentration0)
        torch.testing.assert_close(self.agent.act(self.obs, deterministic=True), expected)
        action, *_ = self.agent.get_action_and_value(self.obs, deterministic=True)
        torch.testing.assert_close(action, expected)

    def test_initial_policy_is_near_symmetric_with_concentrations_one_plus_ln2(self):
        dist = self.agent.distribution(self.obs)
        torch.testing.assert_close(dist.concentration1, torch.full((8,), 1 + math.log(2)), atol=0.05, rtol=0)

    def test_concentrations_are_capped(self):
        agent = GatingPolicyAgent(rl_config(RL_BETA_CONCENTRATION_MAX=15.0))
        with torch.no_grad():
            agent.actor[-1].weight.mul_(1e5)
        dist = agent.distribution(torch.randn(256, 64) * 10)
        self.assertLessEqual(dist.concentration1.max().item(), 15.0)
        self.assertLessEqual(dist.concentration0.max().item(), 15.0)
        self.assertGreaterEqual(dist.concentration0.min().item(), 1.0)

    def test_log_prob_and_entropy_match_torch_distributions(self):
        actions = torch.rand(8)
        _, log_prob, entropy, _ = self.agent.get_action_and_value(self.obs, action=actions)
        out = self.agent.actor(self.agent.trunk(self.obs))
        alpha, beta = F.softplus(out[:, 0]) + 1, F.softplus(out[:, 1]) + 1
        torch.testing.assert_close(log_prob, Beta(alpha, beta).log_prob(actions))
        torch.testing.assert_close(entropy, Beta(alpha, beta).entropy())

    def test_actions_at_the_bounds_are_clamped_before_log_prob(self):
        _, log_prob, _, _ = self.agent.get_action_and_value(self.obs[:2], action=torch.tensor([0.0, 1.0]))
        self.assertTrue(bool(torch.isfinite(log_prob).all()))

    def test_deterministic_act_is_repeatable_and_needs_no_grad(self):
        a = self.agent.act(self.obs, deterministic=True)
        self.assertFalse(a.requires_grad)
        torch.testing.assert_close(a, self.agent.act(self.obs, deterministic=True))

    def test_orthogonal_init_with_gain_sqrt2_and_small_output_layers(self):
        hidden = self.agent.trunk[1].weight  # (128, 64): columns orthonormal times the gain
        torch.testing.assert_close(hidden.T @ hidden, 2.0 * torch.eye(64), atol=1e-4, rtol=0)
        for head in (self.agent.actor, self.agent.critic):
            out = head[-1].weight  # (k, 32): rows orthonormal times 0.01
            torch.testing.assert_close(out @ out.T, 1e-4 * torch.eye(out.shape[0]), atol=1e-8, rtol=0)
        for module in self.agent.modules():
            if isinstance(module, torch.nn.Linear):
                self.assertEqual(module.bias.abs().sum().item(), 0.0)

    def test_cost_head_exists_only_in_lagrangian_mode(self):
        self.assertIsNone(self.agent.cost_critic)
        with self.assertRaises(RuntimeError):
            self.agent.get_cost_value(self.obs)
        agent = GatingPolicyAgent(rl_config(RL_CONSTRAINT_MODE="lagrangian"))
        self.assertEqual(agent.get_cost_value(self.obs).shape, (8,))

    def test_gradients_reach_the_trunk_through_log_prob_and_value(self):
        _, log_prob, entropy, value = self.agent.get_action_and_value(self.obs, action=torch.rand(8))
        (log_prob.sum() + value.sum() + entropy.sum()).backward()
        self.assertGreater(self.agent.trunk[1].weight.grad.abs().sum().item(), 0.0)


class TestGaussianAgent(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.agent = GaussianGatingPolicyAgent(rl_config(RL_AGENT_TYPE="gaussian"))
        with torch.no_grad():  # move the policy off its symmetric start so the checks are not trivial
            self.agent.actor[-1].bias.fill_(0.8)
            self.agent.log_std.fill_(math.log(0.7))
        self.obs = torch.randn(4, 64)

    def test_shapes_and_range(self):
        action, log_prob, entropy, value = self.agent.get_action_and_value(self.obs)
        for t in (action, log_prob, entropy, value):
            self.assertEqual(t.shape, (4,))
        self.assertTrue(bool(((action > 0) & (action < 1)).all()))

    def test_deterministic_action_is_sigmoid_of_the_mean(self):
        mu = self.agent.actor(self.agent.trunk(self.obs)).squeeze(-1)
        torch.testing.assert_close(self.agent.act(self.obs, deterministic=True), torch.sigmoid(mu))

    def test_log_prob_matches_a_numeric_change_of_variables(self):
        obs = self.obs[:1].expand(5, 64)
        a = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
        _, log_prob, _, _ = self.agent.get_action_and_value(obs, action=a.float())
        mu = self.agent.actor(self.agent.trunk(obs)).squeeze(-1).double()
        normal = Normal(mu, self.agent.log_std.exp().double())
        h = 1e-5  # density of a = P(a - h < sigmoid(u) < a + h) / 2h
        numeric = (normal.cdf(torch.logit(a + h)) - normal.cdf(torch.logit(a - h))) / (2 * h)
        torch.testing.assert_close(log_prob.double(), numeric.log(), atol=1e-4, rtol=0)

    def test_entropy_matches_a_monte_carlo_estimate(self):
        obs = self.obs[:1]
        _, _, entropy, _ = self.agent.get_action_and_value(obs)
        torch.manual_seed(1)
        samples = self.agent.act(obs.expand(200_000, 64))
        _, log_prob, _, _ = self.agent.get_action_and_value(obs.expand(200_000, 64), action=samples)
        self.assertAlmostEqual(entropy.item(), -log_prob.mean().item(), delta=0.01)

    def test_entropy_is_differentiable_through_mean_and_scale(self):
        _, _, entropy, _ = self.agent.get_action_and_value(self.obs)
        entropy.sum().backward()
        self.assertNotEqual(self.agent.log_std.grad.item(), 0.0)
        self.assertNotEqual(self.agent.actor[-1].bias.grad.abs().sum().item(), 0.0)


class TestCreateAgent(unittest.TestCase):
    def test_agent_type_selects_the_class(self):
        self.assertIsInstance(create_agent(rl_config(RL_AGENT_TYPE="beta")), GatingPolicyAgent)
        self.assertIsInstance(create_agent(rl_config(RL_AGENT_TYPE="gaussian")), GaussianGatingPolicyAgent)

    def test_unknown_agent_type_names_the_valid_ones(self):
        with self.assertRaises(ValueError) as ctx:
            create_agent(rl_config(RL_AGENT_TYPE="dirichlet"))
        self.assertIn("beta", str(ctx.exception))
        self.assertIn("gaussian", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
