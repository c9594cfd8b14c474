"""The RL environment: the observation (OBSERVATION_DIM wide), prompt groups of K samples, idle rows, one batched
forward per step, termination vs truncation, every decoder through the same step, the per-token oracle, and the
dynamic gates."""
import unittest

import numpy as np
import torch

from plugins.tidal.DataPipeline import EOT_TOKEN_ID, get_tokenizer
from plugins.tidal.Decoding import EDTDecoder, MirostatDecoder, PlainDecoder
from plugins.tidal.GatingEnvironment import (
    OBSERVATION_DIM,
    GatingEnvironment,
    ObservationBuilder,
    OraclePolicy,
    freeze_lm_except_gates,
    gate_state_dict,
)
from plugins.tidal.GatingModulator import GatingModulator, ResidualActionSpace
from plugins.tidal.Judges import NGramJudge
from plugins.tidal.RewardComputer import RewardComputer, content_token_mask
from plugins.tidal.tests.support import rl_config, tiny_config
from plugins.tidal.TransformerLM import TransformerLM

V = 50257
TOK = get_tokenizer()
_JUDGE = NGramJudge.from_texts(["Once upon a time there was a cat. The cat liked the sun."] * 10, order=3)
_CONTENT = content_token_mask(TOK, V)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return TransformerLM(V, tiny_config()).eval()


def make_env(num_envs=4, group=2, env_offset=0, seed=7, model=None, mode="modulation", decoder=None, episode=5,
             **rl_overrides):
    rl = rl_config(RL_MAX_EPISODE_LENGTH=episode, RL_SAMPLES_PER_PROMPT=group, RL_ACTION_MODE=mode, **rl_overrides)
    space = GatingModulator(rl) if mode == "modulation" else \
        ResidualActionSpace(rl, {"temperature": 1.0, "min_p": 0.1})
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 300, size=12).tolist() for _ in range(20)]
    return GatingEnvironment(model or tiny_model(), space, RewardComputer(rl, _JUDGE, _CONTENT), prompts, rl,
                             num_envs=num_envs, seed=seed, env_offset=env_offset, decoder=decoder)


class TestObservation(unittest.TestCase):
    def test_features_on_hand_made_logits(self):
        build = ObservationBuilder(rl_config(RL_MAX_EPISODE_LENGTH=50), tiny_config())
        period = TOK.encode_ordinary(".")[0]
        history = torch.tensor([[5, period, 6, 7, 5, -1]])  # 5 real tokens, right padding
        logits = torch.full((1, V), -1e9)
        logits[0, 5], logits[0, 9] = 0.0, 0.0  # two equally likely tokens, one (5) already in the sequence
        hidden = torch.zeros(1, tiny_config()["EMBED_DIM"])
        obs = build(history, torch.tensor([5]), logits, hidden, torch.tensor([10.0]), torch.tensor([0.3]))
        self.assertEqual(tuple(obs.shape), (1, OBSERVATION_DIM))
        self.assertAlmostEqual(float(obs[0, 0]), np.log(2), places=4)        # entropy
        self.assertAlmostEqual(float(obs[0, 1]), 0.0, places=4)              # varentropy of a uniform pair
        self.assertAlmostEqual(float(obs[0, 2]), 0.5, places=4)              # top-1 probability
        self.assertAlmostEqual(float(obs[0, 8]), 0.5, places=4)              # mass on tokens already seen
        self.assertAlmostEqual(float(obs[0, 10]), 3 / 16, places=4)          # 3 tokens since the "."
        self.assertAlmostEqual(float(obs[0, 11]), 1 - 10 / 50, places=4)     # remaining budget
        self.assertAlmostEqual(float(obs[0, 13]), 0.3, places=4)             # previous action

    def test_distribution_features_match_log_softmax_on_random_logits(self):
        # the features come from unnormalised exp2 probabilities and their moments (ADR 0016); check them against the
        # textbook formulas, with an offset on the logits, which the moments must not suffer from
        build = ObservationBuilder(rl_config(RL_MAX_EPISODE_LENGTH=50), tiny_config())
        g = torch.Generator().manual_seed(3)
        logits = torch.randn(6, V, generator=g) * 3 + 20
        history = torch.randint(0, V, (6, 9), generator=g)
        obs = build(history, None, logits, torch.zeros(6, tiny_config()["EMBED_DIM"]), 4, torch.zeros(6))
        lp = logits.double().log_softmax(dim=-1)
        p = lp.exp()
        entropy = -(p * lp).sum(-1)
        varentropy = (p * lp * lp).sum(-1) - entropy ** 2
        top = p.topk(5, dim=-1).values
        for slot, expected in ((0, entropy), (1, varentropy), (2, top[:, 0]), (3, top[:, 0] - top[:, 1]),
                               (4, top.sum(-1)), (14, lp.max(-1).values)):
            with self.subTest(slot=slot):
                torch.testing.assert_close(obs[:, slot].double(), expected, atol=2e-4, rtol=1e-4)
        token = torch.randint(0, V, (6,), generator=g)
        build.observe(token, logits)
        torch.testing.assert_close(build.state[:, 2].double(), -lp.gather(1, token.unsqueeze(1)).squeeze(1),
                                   atol=1e-4, rtol=0)

    def test_no_slot_is_constant_over_a_rollout(self):
        model = tiny_model()
        with torch.no_grad():
            model.output_projection.bias[:5] += 8.0  # favour a few tokens, so repeats and seen argmaxes happen
        env = make_env(num_envs=8, group=2, model=model, episode=20)
        rows = [env.reset()]
        for _ in range(24):
            rows.append(env.step(torch.rand(8))[0])
        spread = torch.cat(rows).std(dim=0)
        self.assertTrue(bool((spread > 0).all()), f"constant slots: {(spread == 0).nonzero().flatten().tolist()}")


class TestGroups(unittest.TestCase):
    def test_rows_of_a_group_share_a_prompt_and_groups_must_divide_the_batch(self):
        env = make_env(num_envs=6, group=3)
        env.reset()
        p = env.prompt_lengths.tolist()
        self.assertEqual(p[:3], [p[0]] * 3)
        self.assertTrue(torch.equal(env.history[0, :p[0]], env.history[2, :p[0]]))
        with self.assertRaisesRegex(ValueError, "multiple of RL_SAMPLES_PER_PROMPT"):
            make_env(num_envs=5, group=2)

    def test_a_batch_reproduces_its_groups_run_alone(self):
        model = tiny_model()
        big = make_env(num_envs=4, group=2, model=model)
        small = make_env(num_envs=2, group=2, env_offset=2, model=model)
        big.reset(), small.reset()
        for _ in range(4):
            _, _, _, _, a = big.step(torch.full((4,), 0.5))
            _, _, _, _, b = small.step(torch.full((2,), 0.5))
            self.assertEqual(a["tokens"][2:].tolist(), b["tokens"].tolist())

    def test_each_row_draws_its_own_stream_one_uniform_per_step(self):
        # the uniforms come in blocks per row (one generator call per row per block, not per step), yet row b's
        # draws are those of its generator one at a time, across block boundaries, whatever else is drawn
        env = make_env(num_envs=4, seed=7, env_offset=3)
        drawn = torch.stack([env.draw_uniforms() for _ in range(150)], dim=1)  # (4, 150)
        for b in range(4):
            g = torch.Generator().manual_seed(7 * 1_000_003 + 3 + b)
            self.assertTrue(torch.equal(drawn[b], torch.stack([torch.rand((), generator=g) for _ in range(150)])))

    def test_one_batched_forward_per_step(self):
        env = make_env(num_envs=4)
        calls = []
        env.model.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
        env.reset()
        calls.clear()
        for _ in range(4):  # episode length 5: no restart within these steps
            env.step(torch.full((4,), 0.5))
        self.assertEqual(calls, [torch.Size([4, 1])] * 4)

    def test_truncation_then_the_whole_group_restarts(self):
        env = make_env(num_envs=2, group=2)
        env.reset()
        for _ in range(5):
            obs, reward, term, trunc, info = env.step(torch.full((2,), 0.5))
        self.assertTrue(trunc.all())
        self.assertFalse(term.any())
        self.assertEqual(len(info["episode_returns"]), 2)
        self.assertAlmostEqual(float(info["final_obs"][0, 11]), 0.0)  # no budget left
        self.assertTrue(torch.all(obs[:, 11] == 1))  # the returned observation starts the next episode
        self.assertTrue(env.active.all())

    def test_an_ended_row_idles_until_its_siblings_end(self):
        for bootstrap in (False, True):
            with self.subTest(eot_bootstraps=bootstrap):
                env = make_env(num_envs=2, group=2, mode="residual", RL_EOT_BOOTSTRAP=bootstrap)
                env.reset()
                with torch.inference_mode():  # the environment's state is made of inference tensors
                    env.logits[0, EOT_TOKEN_ID] = 1e4  # row 0 ends the story now; row 1 goes on
                _, reward, term, trunc, info = env.step(torch.zeros(2))
                # a terminal end, or (bootstrapping) a truncation: the value of what follows stays in the return
                self.assertEqual((term.tolist(), trunc.tolist()),
                                 (([False, False], [True, False]) if bootstrap else ([True, False], [False, False])))
                self.assertEqual(env.active.tolist(), [False, True])
                _, reward, term, _, info = env.step(torch.zeros(2))
                self.assertEqual(info["active"].tolist(), [False, True])
                self.assertEqual(float(reward[0]), 0.0)
                self.assertTrue(bool(term[0]))  # idle transitions read as ended: nothing bootstraps through them
                self.assertEqual(int(info["tokens"][0]), EOT_TOKEN_ID)


class TestDecoders(unittest.TestCase):
    def test_every_decoder_steps_through_the_same_environment(self):
        for decoder in (PlainDecoder(0.8, 20, 0.9, 0.05, 1.2, 4), PlainDecoder(0.0), MirostatDecoder(3.0),
                        EDTDecoder(), None):
            with self.subTest(decoder=decoder):
                env = make_env(num_envs=4, decoder=decoder)
                env.reset()
                for _ in range(3):
                    obs, reward, _, _, info = env.step(torch.full((4,), 0.5))
                self.assertEqual(tuple(obs.shape), (4, OBSERVATION_DIM))
                self.assertEqual(set(info["components"]), {"quality", "repetition", "overlap", "total"})

    def test_the_residual_action_zero_is_the_base_decoder(self):
        model = tiny_model()
        controlled = make_env(model=model, mode="residual")
        fixed = make_env(model=model, mode="residual", decoder=PlainDecoder(1.0, min_p=0.1, penalty_window=16))
        controlled.reset(), fixed.reset()
        for _ in range(4):
            a = controlled.step(torch.zeros(4))[4]["tokens"]
            b = fixed.step(torch.zeros(4))[4]["tokens"]
            self.assertEqual(a.tolist(), b.tolist())


class TestOracle(unittest.TestCase):
    def test_the_oracle_scores_at_least_every_constant_in_the_same_state(self):
        env = make_env(num_envs=4, mode="residual")
        env.reset()
        actions = [float(a) for a in range(env.action_space.num_actions)]
        oracle = OraclePolicy(env, actions)
        for _ in range(4):
            best = oracle.choose()
            best_reward = env.decide(best, oracle.uniforms)[1]["total"]
            for a in actions:
                reward = env.decide(torch.full((4,), a), oracle.uniforms)[1]["total"]
                self.assertTrue(bool((best_reward >= reward - 1e-6).all()), a)
            env.step(best, oracle.uniforms)


class TestGates(unittest.TestCase):
    def test_m_reaches_the_dynamic_gates_when_used(self):
        model = tiny_model()
        for block in model.transformer_blocks:
            torch.nn.init.normal_(block.ffn_gate.net[2].weight, std=2.0)
        obs = []
        for m in (0.0, 1.0):
            env = make_env(num_envs=2, model=model)
            env.use_gates = True
            env.reset()
            obs.append(env.step(torch.full((2,), m))[4]["final_obs"])
        self.assertFalse(torch.allclose(obs[0][:, 15:], obs[1][:, 15:]))

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
