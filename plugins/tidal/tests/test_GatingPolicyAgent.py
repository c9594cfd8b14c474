import math
import unittest

import torch
import torch.nn.functional as F
from torch.distributions import Beta, Categorical, Normal

from core.testing import slow
from plugins.tidal.GatingEnvironment import OBSERVATION_DIM
from plugins.tidal.GatingPolicyAgent import (
    CategoricalGatingPolicyAgent,
    GatingPolicyAgent,
    GaussianGatingPolicyAgent,
    RunningObsNorm,
    create_agent,
)
from plugins.tidal.tests.support import rl_config


class TestBetaAgent(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.agent = GatingPolicyAgent(rl_config())
        self.obs = torch.randn(8, OBSERVATION_DIM)

    def test_output_shapes_are_flat_batches(self):
        action, log_prob, entropy, value = self.agent.get_action_and_value(self.obs)
        for t in (action, log_prob, entropy, value):
            self.assertEqual(t.shape, (8,))
        self.assertEqual(self.agent.get_value(self.obs).shape, (8,))
        self.assertEqual(self.agent.act(self.obs).shape, (8,))

    def test_sampled_actions_lie_strictly_inside_the_unit_interval(self):
        actions = self.agent.act(torch.randn(4096, OBSERVATION_DIM))
        self.assertTrue(bool(((actions > 0) & (actions < 1)).all()))

    def test_deterministic_action_is_the_beta_mean(self):
        dist = self.agent._distribution(self.agent.features(self.obs))
        expected = dist.concentration1 / (dist.concentration1 + dist.concentration0)
        torch.testing.assert_close(self.agent.act(self.obs, deterministic=True), expected)
        action, *_ = self.agent.get_action_and_value(self.obs, deterministic=True)
        torch.testing.assert_close(action, expected)

    def test_initial_policy_is_near_symmetric_with_concentrations_one_plus_ln2(self):
        dist = self.agent._distribution(self.agent.features(self.obs))
        torch.testing.assert_close(dist.concentration1, torch.full((8,), 1 + math.log(2)), atol=0.05, rtol=0)

    def test_concentrations_are_capped(self):
        agent = GatingPolicyAgent(rl_config(RL_BETA_CONCENTRATION_MAX=15.0))
        with torch.no_grad():
            agent.actor[-1].weight.mul_(1e5)
        dist = agent._distribution(agent.features(torch.randn(256, OBSERVATION_DIM) * 10))
        self.assertLessEqual(dist.concentration1.max().item(), 15.0)
        self.assertLessEqual(dist.concentration0.max().item(), 15.0)
        self.assertGreaterEqual(dist.concentration0.min().item(), 1.0)

    def test_log_prob_and_entropy_match_torch_distributions(self):
        actions = torch.rand(8)
        _, log_prob, entropy, _ = self.agent.get_action_and_value(self.obs, action=actions)
        out = self.agent.actor(self.agent.features(self.obs))
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
        hidden = self.agent.trunk[0].weight  # (128, OBSERVATION_DIM): columns orthonormal times the gain
        torch.testing.assert_close(hidden.T @ hidden, 2.0 * torch.eye(OBSERVATION_DIM), atol=1e-4, rtol=0)
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
        self.assertGreater(self.agent.trunk[0].weight.grad.abs().sum().item(), 0.0)


class TestGaussianAgent(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.agent = GaussianGatingPolicyAgent(rl_config(RL_AGENT_TYPE="gaussian"))
        with torch.no_grad():  # move the policy off its symmetric start so the checks are not trivial
            self.agent.actor[-1].bias.fill_(0.8)
            self.agent.log_std.fill_(math.log(0.7))
        self.obs = torch.randn(4, OBSERVATION_DIM)

    def test_shapes_and_range(self):
        action, log_prob, entropy, value = self.agent.get_action_and_value(self.obs)
        for t in (action, log_prob, entropy, value):
            self.assertEqual(t.shape, (4,))
        self.assertTrue(bool(((action > 0) & (action < 1)).all()))

    def test_deterministic_action_is_sigmoid_of_the_mean(self):
        mu = self.agent.actor(self.agent.features(self.obs)).squeeze(-1)
        torch.testing.assert_close(self.agent.act(self.obs, deterministic=True), torch.sigmoid(mu))

    def test_log_prob_matches_a_numeric_change_of_variables(self):
        obs = self.obs[:1].expand(5, OBSERVATION_DIM)
        a = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95], dtype=torch.float64)
        _, log_prob, _, _ = self.agent.get_action_and_value(obs, action=a.float())
        mu = self.agent.actor(self.agent.features(obs)).squeeze(-1).double()
        normal = Normal(mu, self.agent.log_std.exp().double())
        h = 1e-5  # density of a = P(a - h < sigmoid(u) < a + h) / 2h
        numeric = (normal.cdf(torch.logit(a + h)) - normal.cdf(torch.logit(a - h))) / (2 * h)
        torch.testing.assert_close(log_prob.double(), numeric.log(), atol=1e-4, rtol=0)

    @slow
    def test_entropy_matches_a_monte_carlo_estimate(self):
        obs = self.obs[:1]
        _, _, entropy, _ = self.agent.get_action_and_value(obs)
        torch.manual_seed(1)
        samples = self.agent.act(obs.expand(200_000, OBSERVATION_DIM))
        _, log_prob, _, _ = self.agent.get_action_and_value(obs.expand(200_000, OBSERVATION_DIM), action=samples)
        self.assertAlmostEqual(entropy.item(), -log_prob.mean().item(), delta=0.01)

    def test_entropy_is_differentiable_through_mean_and_scale(self):
        _, _, entropy, _ = self.agent.get_action_and_value(self.obs)
        entropy.sum().backward()
        self.assertNotEqual(self.agent.log_std.grad.item(), 0.0)
        self.assertNotEqual(self.agent.actor[-1].bias.grad.abs().sum().item(), 0.0)


class TestCategoricalAgent(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.agent = CategoricalGatingPolicyAgent(rl_config(RL_AGENT_TYPE="categorical", RL_NUM_ACTIONS=6))
        self.obs = torch.randn(8, OBSERVATION_DIM)

    def test_actions_are_float_indices_one_per_row(self):
        action, log_prob, entropy, value = self.agent.get_action_and_value(self.obs)
        for t in (action, log_prob, entropy, value):
            self.assertEqual(t.shape, (8,))
        self.assertEqual(action.dtype, torch.float32)
        actions = self.agent.act(torch.randn(4096, OBSERVATION_DIM))
        self.assertTrue(torch.equal(actions, actions.round()))
        self.assertEqual(set(actions.long().tolist()), set(range(6)))  # a near-uniform start samples every index

    def test_initial_policy_is_near_uniform(self):
        probs = torch.softmax(self.agent.actor(self.agent.features(self.obs)), dim=-1)
        torch.testing.assert_close(probs, torch.full((8, 6), 1 / 6), atol=0.01, rtol=0)

    def test_deterministic_action_is_the_argmax(self):
        with torch.no_grad():
            self.agent.actor[-1].weight.mul_(100)
        expected = self.agent.actor(self.agent.features(self.obs)).argmax(dim=-1).float()
        torch.testing.assert_close(self.agent.act(self.obs, deterministic=True), expected)

    def test_log_prob_and_entropy_of_float_indices_match_torch_categorical(self):
        actions = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 5.0])
        _, log_prob, entropy, _ = self.agent.get_action_and_value(self.obs, action=actions)
        dist = Categorical(logits=self.agent.actor(self.agent.features(self.obs)))
        torch.testing.assert_close(log_prob, dist.log_prob(actions.long()))
        torch.testing.assert_close(entropy, dist.entropy())

    def test_needs_at_least_two_actions(self):
        with self.assertRaises(ValueError):
            CategoricalGatingPolicyAgent(rl_config(RL_AGENT_TYPE="categorical", RL_NUM_ACTIONS=1))


class TestRunningObsNorm(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.batches = [torch.randn(n, 3) * torch.tensor([1.0, 10.0, 0.1]) + torch.tensor([5.0, -3.0, 0.2])
                        for n in (7, 50, 1, 200)]

    def test_parallel_updates_equal_the_statistics_of_all_observations_at_once(self):
        norm = RunningObsNorm(3, clip=5.0)
        for batch in self.batches:
            norm.update(batch)
        everything = torch.cat(self.batches)
        torch.testing.assert_close(norm.mean, everything.mean(dim=0))
        torch.testing.assert_close(norm.var, everything.var(dim=0, unbiased=False), rtol=1e-4, atol=1e-6)
        self.assertEqual(int(norm.count), everything.shape[0])
        normalised = norm(everything)
        torch.testing.assert_close(normalised.mean(dim=0), torch.zeros(3), atol=1e-4, rtol=0)
        torch.testing.assert_close(normalised.std(dim=0, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)

    def test_is_the_identity_before_any_update_and_clips_outliers(self):
        norm = RunningObsNorm(3, clip=5.0)
        x = torch.tensor([[0.5, -2.0, 100.0]])
        torch.testing.assert_close(norm(x), torch.tensor([[0.5, -2.0, 5.0]]))
        norm.update(torch.randn(100, 3))
        self.assertEqual(norm(torch.full((1, 3), -1e6)).min().item(), -5.0)

    def test_a_constant_dimension_stays_finite_and_near_zero(self):
        norm = RunningObsNorm(2, clip=5.0)
        for _ in range(3):
            norm.update(torch.stack([torch.full((32,), 0.7), torch.randn(32)], dim=1))
        out = norm(torch.tensor([[0.7, 0.0]]))
        self.assertTrue(bool(torch.isfinite(out).all()))
        self.assertLess(abs(out[0, 0].item()), 1e-2)

    def test_only_an_explicit_update_changes_the_statistics(self):
        config = rl_config()
        agent = create_agent(config)
        before = {k: v.clone() for k, v in agent.obs_norm.state_dict().items()}
        agent.train()
        agent.get_action_and_value(torch.randn(16, OBSERVATION_DIM) * 3 + 1)
        agent.act(torch.randn(16, OBSERVATION_DIM) * 3 + 1)
        for key, value in agent.obs_norm.state_dict().items():
            self.assertTrue(torch.equal(value, before[key]), key)
        agent.update_obs_norm(torch.randn(16, OBSERVATION_DIM) * 3 + 1)
        self.assertEqual(int(agent.obs_norm.count), 16)

    def test_statistics_travel_in_the_agent_state_dict(self):
        config = rl_config()
        agent = create_agent(config)
        agent.update_obs_norm(torch.randn(40, OBSERVATION_DIM) * 4 - 2)
        state = agent.state_dict()
        for key in ("obs_norm.mean", "obs_norm.var", "obs_norm.count"):
            self.assertIn(key, state)
        restored = create_agent(config)
        restored.load_state_dict(state)
        obs = torch.randn(5, OBSERVATION_DIM)
        torch.testing.assert_close(restored.features(obs), agent.features(obs))
        self.assertEqual(int(restored.obs_norm.count), 40)

    def test_the_agent_acts_on_normalised_observations(self):
        agent = create_agent(rl_config())
        data = torch.randn(500, OBSERVATION_DIM) * 7 + 3
        agent.update_obs_norm(data)
        obs = data[:4]
        torch.testing.assert_close(agent.features(obs), agent.trunk(agent.obs_norm(obs)))
        self.assertFalse(torch.allclose(agent.features(obs), agent.trunk(obs)))


class TestCreateAgent(unittest.TestCase):
    def test_agent_type_selects_the_class(self):
        self.assertIsInstance(create_agent(rl_config(RL_AGENT_TYPE="beta")), GatingPolicyAgent)
        self.assertIsInstance(create_agent(rl_config(RL_AGENT_TYPE="gaussian")), GaussianGatingPolicyAgent)
        self.assertIsInstance(create_agent(rl_config(RL_AGENT_TYPE="categorical")), CategoricalGatingPolicyAgent)

    def test_unknown_agent_type_names_the_valid_ones(self):
        with self.assertRaises(ValueError) as ctx:
            create_agent(rl_config(RL_AGENT_TYPE="dirichlet"))
        self.assertIn("beta", str(ctx.exception))
        self.assertIn("gaussian", str(ctx.exception))
        self.assertIn("categorical", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
