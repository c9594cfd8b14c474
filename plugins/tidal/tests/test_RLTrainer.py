"""PPO: GAE on hand-computed examples, truncation bootstrap, learning on toy tasks, the validity mask, target-KL,
value clipping, observation normalisation, modes, checkpoints."""
import copy
import unittest

import numpy as np
import torch

from core.errors import TidalError
from core.testing import slow
from plugins.tidal.GatingEnvironment import OBSERVATION_DIM, GatingEnvironment, freeze_lm_except_gates
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.Judges import NGramJudge
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.RLTrainer import PPOTrainer, compute_gae, explained_variance, value_loss
from plugins.tidal.tests.support import TempDirTestCase, rl_config, tiny_config
from plugins.tidal.TransformerLM import TransformerLM, read_checkpoint

V = 50257
# The toy tasks' settings, whatever the shipped config tunes: a Beta policy over m, plain PPO (each option is
# switched on by the test about it).
TOY = {"RL_AGENT_TYPE": "beta", "RL_ROLLOUT_STEPS": 8, "RL_BATCH_SIZE": 16, "RL_NUM_EPOCHS": 4,
       "RL_LEARNING_RATE": 3e-3, "RL_GAMMA": 0.99, "RL_GAE_LAMBDA": 0.95, "RL_TARGET_KL": None,
       "RL_CLIP_VALUE_LOSS": False, "RL_ENTROPY_SCHEDULE": "homeostasis", "RL_ENTROPY_COEF": 0.01,
       "RL_CONSTRAINT_MODE": "weighted"}


class FakeRewardComputer:
    """What the trainer uses of a reward computer: component weights a controller may change, Lagrangian mode and a
    cost computed from the step's components."""

    def __init__(self):
        self.weights = {"quality": 1.0, "diversity": 0.15}
        self.lagrangian = False

    def set_lagrangian_mode(self):
        self.lagrangian = True

    def cost(self, components: dict) -> torch.Tensor:
        return (0.5 - components["diversity"]).clamp(min=0.0)


class TargetEnv:
    """A deterministic toy task with the environment's interface: reward 1 − |m − 0.8|, episodes of 4 steps that
    are truncated (never terminated). Rows listed in `idle` report info["active"] False and junk (reward 100,
    observations 1e3), like rows whose episode ended while the rest of their prompt group still generates; with
    no idle rows info has no "active" key at all."""

    def __init__(self, num_envs=8, idle=()):
        self.num_envs, self.t, self.idle = num_envs, 0, list(idle)
        self.reward_computer = FakeRewardComputer()

    def obs(self):
        o = torch.zeros(self.num_envs, OBSERVATION_DIM)
        o[:, 58] = (self.t % 4) / 4
        o[self.idle] = 1e3
        return o

    def reset(self):
        self.t = 0
        return self.obs()

    def step(self, m):
        self.t += 1
        reward = 1.0 - (m - 0.8).abs()
        reward[self.idle] = 100.0
        truncated = torch.full((self.num_envs,), self.t % 4 == 0)
        final = self.obs()
        final[:, 58] = 1.0
        comps = {"quality": reward, "diversity": torch.full((self.num_envs,), 0.4), "total": reward}
        info = {"components": comps, "final_obs": final, "episode_returns": reward[truncated]}
        if self.idle:
            info["active"] = torch.ones(self.num_envs, dtype=torch.bool)
            info["active"][self.idle] = False
        return self.obs(), reward, torch.zeros(self.num_envs, dtype=torch.bool), truncated, info

    def pop_gate_loss(self):
        return None


class ContextEnv(TargetEnv):
    """A contextual bandit: observation slot 0 is ±1 at random; action 1 pays 1 when it is +1, action 4 when it is
    −1, anything else 0. Every episode is one step (terminated), so only a state-dependent policy scores well."""

    def __init__(self, num_envs=16, seed=0):
        super().__init__(num_envs)
        self.rng = torch.Generator().manual_seed(seed)

    def obs(self):
        self.sign = torch.randint(0, 2, (self.num_envs,), generator=self.rng) * 2 - 1
        o = torch.zeros(self.num_envs, OBSERVATION_DIM)
        o[:, 0] = self.sign.float()
        return o

    def step(self, action):
        reward = (action == torch.where(self.sign > 0, 1.0, 4.0)).float()
        comps = {"match": reward, "total": reward}
        done = torch.ones(self.num_envs, dtype=torch.bool)
        info = {"components": comps, "final_obs": torch.zeros(self.num_envs, OBSERVATION_DIM),
                "episode_returns": reward}
        return self.obs(), reward, done, ~done, info


class TestGAE(unittest.TestCase):
    def test_hand_computed_example(self):
        rewards = torch.tensor([[1.0], [1.0], [1.0]])
        values = torch.tensor([[0.5], [0.5], [0.5]])
        ended = torch.tensor([[0.0], [1.0], [0.0]])  # the episode ends with action 1
        adv, ret = compute_gae(rewards, values, ended, torch.tensor([2.0]), gamma=0.9, lam=0.8)
        # t=2: 1 + .9*2 - .5 = 2.3;  t=1: no bootstrap: 1 - .5 = 0.5;  t=0: (1 + .9*.5 - .5) + .9*.8*.5 = 1.31
        torch.testing.assert_close(adv, torch.tensor([[1.31], [0.5], [2.3]]))
        torch.testing.assert_close(ret, adv + values)

    def test_gamma_zero_is_a_contextual_bandit_advantage_r_minus_v(self):
        torch.manual_seed(0)
        rewards, values = torch.randn(6, 3), torch.randn(6, 3)
        ended = (torch.rand(6, 3) > 0.5).float()
        adv, ret = compute_gae(rewards, values, ended, torch.randn(3), gamma=0.0, lam=0.95)
        torch.testing.assert_close(adv, rewards - values)
        torch.testing.assert_close(ret, rewards)

    def test_advantages_do_not_flow_through_an_idle_transition_even_when_not_marked_ended(self):
        rewards = torch.tensor([[1.0], [1.0], [1.0]])
        values = torch.tensor([[0.5], [0.5], [0.5]])
        ended = torch.zeros(3, 1)
        active = torch.tensor([[True], [False], [True]])
        adv, _ = compute_gae(rewards, values, ended, torch.tensor([2.0]), gamma=0.9, lam=0.8, active=active)
        # t=0 is followed by an idle step: neither V(s_1) nor A_1 reaches it, so A_0 = r − V = 0.5
        self.assertAlmostEqual(adv[0, 0].item(), 0.5)
        self.assertAlmostEqual(adv[2, 0].item(), 2.3)
        all_active, _ = compute_gae(rewards, values, ended, torch.tensor([2.0]), gamma=0.9, lam=0.8,
                                    active=torch.ones(3, 1, dtype=torch.bool))
        torch.testing.assert_close(all_active, compute_gae(rewards, values, ended, torch.tensor([2.0]), 0.9, 0.8)[0])


class TestValueLoss(unittest.TestCase):
    def test_unclipped_is_half_the_squared_error(self):
        new, old, returns = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
        self.assertAlmostEqual(value_loss(new, old, returns, None).item(), 0.5 * (1 + 1) / 2)

    def test_clipped_takes_the_worse_of_the_moved_and_the_clipped_prediction(self):
        old = torch.tensor([0.0, 0.0])
        returns = torch.tensor([1.0, 0.05])
        new = torch.tensor([1.0, 0.1])
        # row 0 moved by 1 > 0.2: clipped to 0.2, error 0.8² = 0.64 beats 0; row 1 within the clip: error 0.05²
        expected = 0.5 * (0.64 + 0.05 ** 2) / 2
        self.assertAlmostEqual(value_loss(new, old, returns, 0.2).item(), expected, places=6)


class TestPPO(TempDirTestCase):
    def config(self, **kw):
        return rl_config(**{**TOY, **kw})

    def test_truncated_steps_bootstrap_from_the_final_observation(self):
        config = self.config(RL_GAMMA=0.9)
        torch.manual_seed(0)
        agent = create_agent(config)
        env = TargetEnv(num_envs=2)
        trainer = PPOTrainer(agent, env, config)
        buf, _, _ = trainer.collect_rollout(env.reset())
        final = torch.zeros(2, OBSERVATION_DIM)
        final[:, 58] = 1.0
        with torch.no_grad():
            bootstrap = 0.9 * agent.get_value(final)
        raw = 1.0 - (buf["actions"][3] - 0.8).abs()
        torch.testing.assert_close(buf["rewards"][3], raw + bootstrap)
        self.assertTrue(torch.all(buf["ended"][3] == 1) and torch.all(buf["ended"][2] == 0))

    @slow
    def test_reward_improves_on_a_toy_task(self):
        config = self.config()
        torch.manual_seed(0)
        agent = create_agent(config)
        trainer = PPOTrainer(agent, TargetEnv(), config)
        history = trainer.train(total_timesteps=8 * 8 * 40, progress=False)
        rewards = history["episode_rewards"]
        self.assertGreater(np.mean(rewards[-5:]), np.mean(rewards[:5]) + 0.1)
        self.assertLess(abs(history["gate_modulation"][-1] - 0.8), 0.15)
        for key in ("policy_loss", "value_loss", "entropy", "entropy_coef", "gate_modulation", "explained_variance",
                    "reward_quality", "reward_diversity", "approx_kl", "clip_fraction", "active_fraction"):
            self.assertEqual(len(history[key]), 40, key)
        self.assertNotIn("reward_total", history)  # the components are the env's names, without the total
        self.assertNotIn("epochs_run", history)  # logged only when target-KL is on

    @slow
    def test_categorical_agent_learns_a_state_dependent_choice_as_a_contextual_bandit(self):
        config = self.config(RL_AGENT_TYPE="categorical", RL_NUM_ACTIONS=6, RL_GAMMA=0.0, RL_GAE_LAMBDA=0.0,
                             RL_ENTROPY_SCHEDULE="constant", RL_ENTROPY_COEF=0.001, RL_BATCH_SIZE=32)
        torch.manual_seed(0)
        agent = create_agent(config)
        env = ContextEnv()
        history = PPOTrainer(agent, env, config).train(total_timesteps=16 * 8 * 30, progress=False)
        self.assertTrue(all(c == 0.001 for c in history["entropy_coef"]))
        obs = torch.zeros(2, OBSERVATION_DIM)
        obs[:, 0] = torch.tensor([1.0, -1.0])
        torch.testing.assert_close(agent.act(obs, deterministic=True), torch.tensor([1.0, 4.0]))
        self.assertGreater(np.mean(history["episode_rewards"][-3:]), 0.8)

    def test_lagrangian_and_diversity_modes_log_their_keys(self):
        config = self.config(RL_CONSTRAINT_MODE="lagrangian")
        torch.manual_seed(0)
        env = TargetEnv()
        trainer = PPOTrainer(create_agent(config), env, config)
        self.assertTrue(env.reward_computer.lagrangian)
        history = trainer.train(total_timesteps=8 * 8 * 3, progress=False)
        for key in ("lagrange_multiplier", "mean_cost", "cost_value_loss"):
            self.assertEqual(len(history[key]), 3)
        # cost(components) = 0.5 − diversity 0.4, plus the small γ·V_c(final obs) bootstrap at truncations
        self.assertAlmostEqual(history["mean_cost"][0], 0.1, delta=0.01)
        self.assertEqual(history["progress"], [1 / 3, 2 / 3, 1.0])  # of this run's --timesteps budget
        self.assertGreater(history["lagrange_multiplier"][-1], 1.0)  # cost 0.1 > 0 keeps pushing λ up

    # ------------------------------------------------------------------------------------- the validity mask
    def test_idle_rows_are_stored_as_inactive_and_left_out_of_the_rollout_diagnostics(self):
        config = self.config()
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(num_envs=4, idle=(1, 3)), config)
        buf, _, stats = trainer.collect_rollout(trainer.env.reset())
        torch.testing.assert_close(buf["active"], torch.tensor([True, False, True, False]).expand(8, 4))
        active_actions = buf["actions"][:, [0, 2]]
        self.assertAlmostEqual(stats["components"]["quality"], (1 - (active_actions - 0.8).abs()).mean().item(),
                               places=5)  # the idle rows' 100 is not in it
        self.assertAlmostEqual(stats["modulation"], active_actions.mean().item(), places=5)
        self.assertEqual(stats["active_fraction"], 0.5)
        buf, _, _ = PPOTrainer(create_agent(config), TargetEnv(num_envs=4), config).collect_rollout(
            TargetEnv(num_envs=4).reset())
        self.assertTrue(bool(buf["active"].all()))  # no "active" in info: every row counts

    def test_an_update_with_idle_transitions_equals_the_update_without_them(self):
        for mode, clip in (("weighted", False), ("weighted", True), ("lagrangian", True)):
            with self.subTest(mode=mode, clip_value_loss=clip):
                config = self.config(RL_CONSTRAINT_MODE=mode, RL_CLIP_VALUE_LOSS=clip, RL_BATCH_SIZE=12)
                torch.manual_seed(0)
                agent = create_agent(config)
                small = PPOTrainer(agent, TargetEnv(num_envs=4), config)
                padded = PPOTrainer(copy.deepcopy(agent), TargetEnv(num_envs=8), config)
                buf, next_obs, _ = small.collect_rollout(small.env.reset())
                # every other column is an idle row full of junk, not even marked ended
                junk = {key: torch.randn_like(value) * 50 for key, value in buf.items() if key != "active"}
                junk["ended"] = torch.zeros(8, 4)
                junk["actions"] = torch.rand(8, 4)
                wide = {key: torch.stack([buf[key], junk[key]], dim=2).reshape(8, 8, *buf[key].shape[2:])
                        for key in junk}
                wide["active"] = torch.tensor([True, False]).repeat(4).expand(8, 8)
                wide_next = torch.stack([next_obs, torch.randn(4, OBSERVATION_DIM) * 50], dim=1)
                wide_next = wide_next.reshape(8, OBSERVATION_DIM)
                torch.manual_seed(1)
                expected = small.update(buf, next_obs, entropy_coef=0.01)
                torch.manual_seed(1)
                result = padded.update(wide, wide_next, entropy_coef=0.01)
                self.assertEqual(expected.keys(), result.keys())
                for key in expected:
                    self.assertAlmostEqual(result[key], expected[key], places=5, msg=key)
                for (name, a), b in zip(small.agent.named_parameters(), padded.agent.parameters(), strict=True):
                    torch.testing.assert_close(a, b, msg=name)

    def test_explained_variance_counts_active_transitions_only(self):
        config = self.config()
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(num_envs=4, idle=(1, 3)), config)
        buf, next_obs, _ = trainer.collect_rollout(trainer.env.reset())
        with torch.no_grad():
            _, returns = compute_gae(buf["rewards"], buf["values"], buf["ended"], trainer.agent.get_value(next_obs),
                                     config["RL_GAMMA"], config["RL_GAE_LAMBDA"], active=buf["active"])
        result = trainer.update(buf, next_obs, entropy_coef=0.01)
        active = buf["active"]
        self.assertAlmostEqual(result["explained_variance"],
                               explained_variance(buf["values"][active], returns[active]), places=6)

    # ------------------------------------------------------------------------------------- target-KL, normaliser
    def adam_steps(self, trainer) -> int:
        return int(trainer.optimizer.state[next(trainer.agent.parameters())]["step"])

    def test_target_kl_stops_the_epoch_loop_and_reports_the_epochs_run(self):
        config = self.config(RL_TARGET_KL=1e-9, RL_BATCH_SIZE=16)  # 64 transitions: 4 minibatches per epoch
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(), config)
        buf, next_obs, _ = trainer.collect_rollout(trainer.env.reset())
        result = trainer.update(buf, next_obs, entropy_coef=0.01)
        self.assertEqual(result["epochs_run"], 1)
        self.assertEqual(self.adam_steps(trainer), 4)
        config = self.config(RL_TARGET_KL=10.0, RL_BATCH_SIZE=16)
        trainer = PPOTrainer(create_agent(config), TargetEnv(), config)
        history = trainer.train(total_timesteps=8 * 8 * 2, progress=False)
        self.assertEqual(history["epochs_run"], [4, 4])
        self.assertEqual(self.adam_steps(trainer), 2 * 4 * 4)

    def test_without_target_kl_every_epoch_runs(self):
        config = self.config(RL_TARGET_KL=None)
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(), config)
        buf, next_obs, _ = trainer.collect_rollout(trainer.env.reset())
        self.assertNotIn("epochs_run", trainer.update(buf, next_obs, entropy_coef=0.01))
        self.assertEqual(self.adam_steps(trainer), 4 * 4)

    def test_observation_statistics_learn_from_active_rows_once_per_iteration(self):
        config = self.config()
        torch.manual_seed(0)
        agent = create_agent(config)
        trainer = PPOTrainer(agent, TargetEnv(num_envs=4, idle=(3,)), config)
        buf, _, _ = trainer.collect_rollout(trainer.env.reset())
        self.assertEqual(int(agent.obs_norm.count), 0)  # frozen while acting: stored log-probs stay valid
        with torch.no_grad():
            _, logprob, _, _ = agent.get_action_and_value(buf["obs"].reshape(-1, OBSERVATION_DIM),
                                                          buf["actions"].reshape(-1))
        torch.testing.assert_close(logprob, buf["logprobs"].reshape(-1))
        trainer.train(total_timesteps=4 * 8 * 2, progress=False)
        self.assertEqual(int(agent.obs_norm.count), 2 * 8 * 3)  # two rollouts of 8 steps × 3 active rows
        self.assertLess(agent.obs_norm.mean.abs().max().item(), 1.0)  # the idle rows' 1e3 never got in

    def test_checkpoint_carries_the_observation_statistics(self):
        config = self.config(RL_CHECKPOINT_INTERVAL=1)
        torch.manual_seed(0)
        trainer = PPOTrainer(create_agent(config), TargetEnv(), config, self.tmp)
        trainer.train(total_timesteps=8 * 8 * 2, progress=False)
        state = read_checkpoint(self.tmp / "rl_checkpoint_iter_2.pth")
        self.assertEqual(int(state["agent_state_dict"]["obs_norm.count"]), 2 * 64)
        resumed = PPOTrainer(create_agent(config), TargetEnv(), config, self.tmp)
        resumed.load_checkpoint(self.tmp / "rl_checkpoint_iter_2.pth")
        self.assertEqual((resumed.global_step, resumed.iteration), (128, 2))
        for key, value in trainer.agent.state_dict().items():
            self.assertTrue(torch.equal(value, resumed.agent.state_dict()[key]), key)

    def test_a_checkpoint_of_another_agent_architecture_is_a_clear_error(self):
        gaussian = self.config(RL_AGENT_TYPE="gaussian")
        PPOTrainer(create_agent(gaussian), TargetEnv(), gaussian).save_checkpoint(self.tmp / "gaussian.pth")
        trainer = PPOTrainer(create_agent(self.config()), TargetEnv(), self.config())
        with self.assertRaises(TidalError) as ctx:
            trainer.load_checkpoint(self.tmp / "gaussian.pth")
        self.assertIn("gaussian.pth", str(ctx.exception))

    def test_real_environment_with_trained_gates_and_checkpoint_round_trip(self):
        config = self.config(RL_MAX_EPISODE_LENGTH=4, RL_NUM_ENVS=2, RL_SAMPLES_PER_PROMPT=2,
                             RL_CHECKPOINT_INTERVAL=1, RL_UNFREEZE_DYNAMIC_GATES=True)
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config())
        gates = freeze_lm_except_gates(model)
        before = [p.detach().clone() for p in gates]
        rng = np.random.default_rng(0)
        judge = NGramJudge.from_tokens(rng.integers(0, 99, 500), order=2)
        rc = RewardComputer(config, judge, torch.zeros(V, dtype=torch.bool))
        env = GatingEnvironment(model, GatingModulator(config), rc, [rng.integers(0, 99, 10).tolist()] * 4, config,
                                gate_training=True)
        trainer = PPOTrainer(create_agent(config), env, config, self.tmp, gate_params=gates,
                             extra_state={"action_base": None, "lm_checkpoint": "lm.pth"})
        history = trainer.train(total_timesteps=2 * 8 * 2, progress=False)
        self.assertEqual(len(history["gate_loss"]), 2)
        self.assertTrue(any(not torch.equal(a, b) for a, b in zip(before, gates, strict=True)),
                        "gate weights were trained")
        state = read_checkpoint(self.tmp / "rl_checkpoint_iter_2.pth")
        for key in ("agent_state_dict", "optimizer_state_dict", "global_step", "config", "gate_state_dict",
                    "entropy_schedule", "action_base", "lm_checkpoint"):
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
