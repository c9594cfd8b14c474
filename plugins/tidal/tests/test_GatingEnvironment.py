"""The vectorized RL environment: observation layout, N batched envs == N single envs, one forward per step,
termination vs truncation, gates fed with m, and the gate-training objective."""
import unittest

import numpy as np
import torch

from plugins.tidal.DataPipeline import EOT_TOKEN_ID
from plugins.tidal.GatingEnvironment import GatingEnvironment, ObservationBuilder, freeze_lm_except_gates, gate_state_dict
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.TransformerLM import TransformerLM
from tests.support import rl_config, tiny_config

V = 50257


def make_env(num_envs=3, env_offset=0, seed=7, model=None, **rl_overrides):
    rl = rl_config(RL_MAX_EPISODE_LENGTH=5, **rl_overrides)
    if model is None:
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config()).eval()
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 300, size=2000).astype(np.uint16)
    rc = RewardComputer(rl, V, RewardComputer.bigram_statistics_from_tokens(stream, V))
    prompts = [rng.integers(0, 300, size=12).tolist() for _ in range(20)]
    return GatingEnvironment(model, GatingModulator(rl), rc, prompts, rl, num_envs=num_envs, seed=seed,
                             env_offset=env_offset)


class TestObservation(unittest.TestCase):
    def test_layout_on_hand_made_tokens(self):
        rl = rl_config(RL_MAX_EPISODE_LENGTH=50)
        cfg = tiny_config(EMBED_DIM=48)  # 24 chunks of 2 dimensions
        build = ObservationBuilder(rl, cfg)
        tokens = torch.tensor([[5, 5, 6, 7, 5, -1, -1]])  # 5 real tokens, right padding
        logits = torch.zeros(1, 16)  # uniform: entropy ln 16
        hidden = torch.arange(48, dtype=torch.float32).unsqueeze(0)
        obs = build(tokens, logits, hidden, torch.tensor([10.0]), torch.tensor([0.3]), lengths=torch.tensor([5]))
        self.assertEqual(tuple(obs.shape), (1, 64))
        o = obs[0]
        self.assertAlmostEqual(o[0].item(), 1 - 3 / 5)                 # repetition ratio
        self.assertAlmostEqual(o[1].item(), np.log(16) / 10, places=5)  # raw entropy / 10
        self.assertAlmostEqual(o[2].item(), 4 / 4)                     # bigrams 55 56 67 75 all distinct
        self.assertAlmostEqual(o[3].item(), 3 / 3)                     # trigrams distinct
        self.assertAlmostEqual(o[4].item(), 3 / 5)                     # unique ratio of the (5) recent tokens
        self.assertAlmostEqual(o[5].item(), 3 / 5)                     # most common (5 appears 3 times)
        self.assertAlmostEqual(o[6].item(), 5 / 100)
        self.assertTrue(torch.all(o[7:10] == 0))
        torch.testing.assert_close(o[10:34], torch.arange(48.).view(24, 2).mean(1))
        torch.testing.assert_close(o[34:58], torch.arange(48.).view(24, 2).std(1))
        self.assertAlmostEqual(o[58].item(), 10 / 50)
        self.assertEqual(o[59].item(), 1.0)
        self.assertAlmostEqual(o[60].item(), 0.3, places=6)
        self.assertTrue(torch.all(o[61:] == 0))

    def test_repeated_bigrams_lower_diversity(self):
        build = ObservationBuilder(rl_config(), tiny_config())
        obs = build(torch.tensor([[1, 2, 1, 2, 1, 2]]), torch.zeros(1, 8), torch.zeros(1, 32), 0, torch.zeros(1))
        self.assertAlmostEqual(obs[0, 2].item(), 2 / 5)  # bigrams 12 21 12 21 12
        self.assertAlmostEqual(obs[0, 3].item(), 2 / 4)


class TestEnvironment(unittest.TestCase):
    def test_vectorized_equals_single_environments(self):
        vec = make_env(num_envs=3)
        singles = [make_env(num_envs=1, env_offset=i) for i in range(3)]
        obs = vec.reset()
        single_obs = torch.cat([e.reset() for e in singles])
        torch.testing.assert_close(obs, single_obs, atol=1e-4, rtol=0)
        for t in range(12):  # crosses episode boundaries (length 5)
            m = torch.tensor([0.1, 0.5, 0.9]) * ((t % 3) + 1) / 3
            obs, reward, term, trunc, info = vec.step(m)
            outs = [e.step(m[i:i + 1]) for i, e in enumerate(singles)]
            self.assertEqual(info["tokens"].tolist(), [o[4]["tokens"].item() for o in outs], f"step {t}")
            torch.testing.assert_close(reward, torch.cat([o[1] for o in outs]), atol=1e-4, rtol=0)
            torch.testing.assert_close(obs, torch.cat([o[0] for o in outs]), atol=1e-4, rtol=0)
            self.assertEqual(trunc.tolist(), [o[3].item() for o in outs])

    def test_one_batched_forward_per_step(self):
        env = make_env(num_envs=4)
        calls = []
        env.model.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
        env.reset()
        calls.clear()
        for _ in range(4):  # episode length 5: no restart within these steps
            env.step(torch.full((4,), 0.5))
        self.assertEqual(calls, [torch.Size([4, 1])] * 4)

    def test_truncation_at_the_length_limit_and_auto_reset(self):
        env = make_env(num_envs=2)
        env.reset()
        for t in range(5):
            obs, reward, term, trunc, info = env.step(torch.full((2,), 0.5))
        self.assertTrue(trunc.all())
        self.assertFalse(term.any())
        self.assertEqual(len(info["episode_returns"]), 2)
        self.assertTrue(torch.allclose(info["final_obs"][:, 58], torch.ones(2)))  # step 5 of 5
        self.assertTrue(torch.all(obs[:, 58] == 0))  # the returned observation starts the next episode

    def test_end_of_text_terminates(self):
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config()).eval()
        with torch.no_grad():
            model.output_projection.bias[EOT_TOKEN_ID] = 1e4  # the model always ends the story
        env = make_env(num_envs=2, model=model)
        env.reset()
        _, _, term, trunc, info = env.step(torch.full((2,), 0.5))
        self.assertTrue(term.all())
        self.assertFalse(trunc.any())
        self.assertEqual(info["episode_lengths"].tolist(), [1, 1])

    def test_reward_components_are_batched(self):
        env = make_env(num_envs=3)
        env.reset()
        _, reward, _, _, info = env.step(torch.tensor([0.0, 0.5, 1.0]))
        self.assertEqual(tuple(reward.shape), (3,))
        for name in ("perplexity", "diversity", "sampling", "repetition", "coherence", "total"):
            self.assertEqual(tuple(info["components"][name].shape), (3,))
        self.assertEqual(info["effects"].top_k.tolist(), [5, 52, 100])


class TestGates(unittest.TestCase):
    def test_m_reaches_the_dynamic_gates_when_used(self):
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config()).eval()
        for block in model.transformer_blocks:
            torch.nn.init.normal_(block.ffn_gate.net[2].weight, std=2.0)
        obs = []
        for m in (0.0, 1.0):
            env = make_env(num_envs=1, model=model, RL_UNFREEZE_DYNAMIC_GATES=True)
            env.use_gates = True
            env.reset()
            obs.append(env.step(torch.tensor([m]))[4]["final_obs"])
        self.assertFalse(torch.allclose(obs[0][:, 10:58], obs[1][:, 10:58]))

    def test_gate_training_accumulates_gradients_only_in_gates(self):
        torch.manual_seed(0)
        model = TransformerLM(V, tiny_config())
        gates = freeze_lm_except_gates(model)
        self.assertEqual(len(gates), 2 * 2 * 4)  # 2 blocks x 2 gates x (2 weights + 2 biases)
        env = make_env(num_envs=2, model=model)
        env.gate_training = env.use_gates = True
        env.reset()
        for _ in range(3):
            env.step(torch.tensor([0.1, 0.9]))
        self.assertTrue(all(p.grad is not None for p in gates))
        self.assertTrue(all(p.grad is None for n, p in model.named_parameters() if "_gate." not in n))
        self.assertIsInstance(env.pop_gate_loss(), float)
        self.assertIsNone(env.pop_gate_loss())
        self.assertTrue(all("_gate." in k for k in gate_state_dict(model)))


if __name__ == "__main__":
    unittest.main()
