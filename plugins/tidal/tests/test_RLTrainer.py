"""PPO: GAE on a hand-computed example, truncation bootstrap, learning on a toy task, modes, checkpoints."""
import unittest

import numpy as np
import torch

from plugins.tidal.GatingEnvironment import GatingEnvironment, freeze_lm_except_gates
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.RLTrainer import PPOTrainer, compute_gae
from plugins.tidal.TransformerLM import TransformerLM, read_checkpoint
from tests.support import TempDirTestCase, rl_config, tiny_config

V = 50257


class TargetEnv:
    """A deterministic toy task with the environment's interface: reward 1 − |m − 0.8|, episodes of 4 steps that
    are truncated (never terminated). Lets PPO's learning and bootstrapping be checked without a language model."""

    def __init__(self, config, num_envs=8):
        self.num_envs, self.t = num_envs, 0
        self.reward_computer = RewardComputer(config, 10, RewardComputer.bigram_statistics_from_tokens(np.arange(10), 10))

    def obs(self):
        o = torch.zeros(self.num_envs, 64)
        o[:, 58] = (self.t % 4) / 4
        return o

    def reset(self):
        self.t = 0
        return self.obs()

    def step(self, m):
        self.t += 1
        reward = 1.0 - (m - 0.8).abs()
        truncated = torch.full((self.num_envs,), self.t % 4 == 0)
        final = self.obs()
        final[:, 58] = 1.0
        comps = {k: torch.zeros(self.num_envs) for k in ("perplexity", "diversity", "sampling", "repetition", "coherence")}
        comps["diversity"] += 0.4
        info = {"components": comps, "final_obs": final, "episode_returns": reward[truncated]}
        return self.obs(), reward, torch.zeros(self.num_envs, dtype=torch.bool), truncated, info

    def pop_gate_loss(self):
        return None


class TestGAE(unittest.TestCase):
    def test_hand_computed_example(self):
        rewards = torch.tensor([[1.0], [1.0], [1.0]])
        values = torch.tensor([[0.5], [0.5], [0.5]])
        ended = torch.tensor([[0.0], [1.0], [0.0]])  # the episode ends with action 1
        adv, ret = compute_gae(rewards, values, ended, torch.tensor([2.0]), gamma=0.9, lam=0.8)
        # t=2: 1 + .9*2 - .5 = 2.3;  t=1: no bootstrap: 1 - .5 = 0.5;  t=0: (1 + .9*.5 - .5) + .9*.8*.5 = 1.31
        torch.testing.assert_close(adv, torch.tensor([[1.31], [0.5], [2.3]]))
        torch.testing.assert_close(ret, adv + values)


class TestPPO(TempDirTestCase):
    def config(self, **kw):
        return rl_config(RL_ROLLOUT_STEPS=8, RL_BATCH_SIZE=16, RL_NUM_EPOCHS=4, RL_LEARNING_RATE=3e-3, **kw)

    def test_truncated_steps_bootstrap_from_the_final_observation(self):
        config = self.config(RL_GAMMA=0.9)
        torch.manual_seed(0)
        agent = create_agent(config)
        env = TargetEnv(config, num_envs=2)
        trainer = PPOTrainer(agent, env, config)
        buf, _, _ = trainer.collect_rollout(env.reset())
        final = torch.zeros(2, 64)
        final[:, 58] = 1.0
        with torch.no_grad():
            bootstrap = 0.9 * agent.get_value(final)
        raw = 1.0 - (buf["actions"][3] - 0.8).abs()
        torch.testing.assert_close(buf["rewards"][3], raw + bootstrap)
        self.assertTrue(torch.all(buf["ended"][3] == 1) and torch.all(buf["ended"][2] == 0))

    def test_reward_improves_on_a_toy_task(self):
        config = self.config()
        torch.manual_seed(0)
        agent = create_agent(config)
        trainer = PPOTrainer(agent, TargetEnv(config), config)
        history = trainer.train(total_timesteps=8 * 8 * 40, progress=False)
        rewards = history["episode_rewards"]
        self.assertGreater(np.mean(rewards[-5:]), np.mean(rewards[:5]) + 0.1)
        self.assertLess(abs(history["gate_modulation"][-1] - 0.8), 0.15)
        for key in ("policy_loss", "value_loss", "entropy", "entropy_coef", "gate_modulation", "explained_variance",
                    "reward_perplexity", "reward_diversity", "reward_sampling", "reward_repetition",
                    "reward_coherence", "approx_kl", "clip_fraction"):
            self.assertEqual(len(history[key]), 40, key)

    def test_lagrangian_and_diversity_modes_log_their_keys(self):
        config = self.config(RL_CONSTRAINT_MODE="lagrangian", RL_DIVERSITY_CONSTRAINT_THRESHOLD=0.5)
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(config), config)
        history = trainer.train(total_timesteps=8 * 8 * 3, progress=False)
        for key in ("lagrange_multiplier", "mean_cost", "cost_value_loss"):
            self.assertEqual(len(history[key]), 3)
        self.assertEqual(history["progress"], [1 / 3, 2 / 3, 1.0])  # of this run's --timesteps budget
        self.assertGreater(history["lagrange_multiplier"][-1], 1.0)  # cost 0.1 > 0 keeps pushing λ up
        config = self.config(RL_DIVERSITY_HOMEOSTASIS_TARGET=0.55)
        history = PPOTrainer(create_agent(config), TargetEnv(config), config).train(8 * 8 * 3, progress=False)
        self.assertGreater(history["diversity_weight"][-1], 0.15)  # mean diversity 0.4 < target: weight rises

    def test_real_environment_with_trained_gates_and_checkpoint_round_trip(self):
        config = self.config(RL_MAX_EPISODE_LENGTH=4, RL_NUM_ENVS=2, RL_CHECKPOINT_INTERVAL=1,
                             RL_UNFREEZE_DYNAMIC_GATES=True)
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config())
        gates = freeze_lm_except_gates(model)
        before = [p.detach().clone() for p in gates]
        rng = np.random.default_rng(0)
        rc = RewardComputer(config, V, RewardComputer.bigram_statistics_from_tokens(rng.integers(0, 99, 500), V))
        env = GatingEnvironment(model, GatingModulator(config), rc, [rng.integers(0, 99, 10).tolist()] * 4, config,
                                gate_training=True)
        trainer = PPOTrainer(create_agent(config), env, config, self.tmp, gate_params=gates)
        history = trainer.train(total_timesteps=2 * 8 * 2, progress=False)
        self.assertEqual(len(history["gate_loss"]), 2)
        self.assertTrue(any(not torch.equal(a, b) for a, b in zip(before, gates)), "gate weights were trained")
        state = read_checkpoint(self.tmp / "rl_checkpoint_iter_2.pth")
        for key in ("agent_state_dict", "optimizer_state_dict", "global_step", "config", "gate_state_dict",
                    "entropy_schedule"):
            self.assertIn(key, state)
        self.assertEqual(state["global_step"], 32)
        self.assertTrue((self.tmp / "rl_metrics" / "rl_training_metrics.json").is_file())
        resumed = PPOTrainer(create_agent(config), env, config, self.tmp, gate_params=gates)
        resumed.load_checkpoint(self.tmp / "rl_checkpoint_iter_2.pth")
        self.assertEqual((resumed.global_step, resumed.iteration), (32, 2))
        self.assertEqual(resumed.entropy_schedule.state_dict(), trainer.entropy_schedule.state_dict())
        for k, v in trainer.agent.state_dict().items():
            self.assertTrue(torch.equal(v, resumed.agent.state_dict()[k]), k)


if __name__ == "__main__":
    unittest.main()
