import math
import unittest
import warnings

import numpy as np
import torch

from plugins.tidal.RewardComputer import AblationRewardComputer, BigramStatistics, RewardComputer
from plugins.tidal.Utils import RL_CONFIG_PATH, read_yaml

V = 10
NEG_INF = float("-inf")


def rl_config(**overrides):
    config = read_yaml(RL_CONFIG_PATH)
    config.update(overrides)
    return config


def stats_from(stream, vocab_size=V):
    return RewardComputer.bigram_statistics_from_tokens(np.asarray(stream, dtype=np.uint16), vocab_size)


def compute(rc, *, logprob=None, modulated=None, sampling=None, new=None, prev=None, recent=None, batch=1):
    """Call `compute` with neutral defaults for everything a test does not look at."""
    return rc.compute(
        token_logprob=torch.zeros(batch) if logprob is None else logprob,
        modulated_logits=torch.zeros(batch, V) if modulated is None else modulated,
        sampling_logits=torch.zeros(batch, V) if sampling is None else sampling,
        new_token=torch.full((batch,), 1) if new is None else new,
        prev_token=torch.full((batch,), 2) if prev is None else prev,
        recent_tokens=torch.full((batch, 10), -1) if recent is None else recent,
    )


def gaussian(h, target):
    return math.exp(-0.5 * ((h - target) / (target / 2)) ** 2)


class TestRewardComponents(unittest.TestCase):
    def setUp(self):
        self.rc = RewardComputer(rl_config(), V, stats_from([1, 2, 1, 2, 1, 3]))

    def test_perplexity_reward_is_minus_log_ppl_over_log_clip(self):
        logprob = torch.log(torch.tensor([1.0, 0.1, 0.001]))
        out = compute(self.rc, logprob=logprob, batch=3)
        # ppl 1 -> 0; ppl 10 -> -ln10/ln100 = -0.5; ppl 1000 is clipped at 100 -> -1.
        torch.testing.assert_close(out["perplexity"], torch.tensor([0.0, -0.5, -1.0]))

    def test_perplexity_of_an_impossible_token_is_minus_one_not_nan(self):
        out = compute(self.rc, logprob=torch.tensor([NEG_INF]))
        self.assertEqual(out["perplexity"].item(), -1.0)

    def test_diversity_is_gaussian_in_entropy_of_modulated_logits(self):
        # Uniform over V=10 tokens: H = ln 10; target 5 with bandwidth 2.5.
        out = compute(self.rc)
        self.assertAlmostEqual(out["diversity"].item(), gaussian(math.log(10), 5.0), places=5)

    def test_diversity_peaks_at_one_when_entropy_hits_the_target(self):
        rc = RewardComputer(rl_config(RL_ENTROPY_TARGET=math.log(V)), V, stats_from([1, 2]))
        self.assertAlmostEqual(compute(rc)["diversity"].item(), 1.0, places=5)

    def test_sampling_reward_uses_entropy_of_masked_sampling_logits(self):
        sampling = torch.tensor([[0.0, 0.0, 0.0, 0.0] + [NEG_INF] * 6])  # uniform over 4: H = ln 4
        out = compute(self.rc, sampling=sampling)
        self.assertFalse(torch.isnan(out["sampling"]).any())
        self.assertAlmostEqual(out["sampling"].item(), gaussian(math.log(4), 2.5), places=5)

    def test_sampling_reward_of_a_single_kept_token_is_gaussian_at_zero_entropy(self):
        sampling = torch.tensor([[3.0] + [NEG_INF] * 9])
        self.assertAlmostEqual(compute(self.rc, sampling=sampling)["sampling"].item(), gaussian(0.0, 2.5), places=5)

    def test_repetition_penalty_for_counts_0_to_5(self):
        recent = torch.full((6, 10), -1)
        for c in range(6):
            recent[c, 10 - c:] = 7
        out = compute(self.rc, new=torch.full((6,), 7), prev=torch.full((6,), 3), recent=recent, batch=6)
        torch.testing.assert_close(out["repetition"], torch.tensor([0.0, 0.25, 0.5, 0.75, 0.8, 0.85]))

    def test_repetition_penalty_reaches_its_cap_of_one(self):
        recent = torch.full((2, 10), 7)
        recent[1, :3] = 4  # c = 7 -> 0.95; c = 10 -> 1.1 capped at 1
        out = compute(self.rc, new=torch.tensor([7, 7]), prev=torch.tensor([3, 3]), recent=recent.flip(0), batch=2)
        torch.testing.assert_close(out["repetition"], torch.tensor([0.95, 1.0]))

    def test_repeating_the_previous_token_adds_0_3_and_stays_capped(self):
        recent = torch.full((2, 10), -1)
        recent[0, -1] = 7            # c = 1 and new == prev: 0.25 + 0.3
        recent[1, -3:] = 7           # c = 3 and new == prev: 0.75 + 0.3 -> capped at 1
        out = compute(self.rc, new=torch.tensor([7, 7]), prev=torch.tensor([7, 7]), recent=recent, batch=2)
        torch.testing.assert_close(out["repetition"], torch.tensor([0.55, 1.0]))

    def test_only_the_last_window_tokens_count(self):
        recent = torch.full((1, 12), 5)
        recent[0, :2] = 7  # older than RL_REPETITION_WINDOW = 10
        out = compute(self.rc, new=torch.tensor([7]), prev=torch.tensor([5]), recent=recent)
        self.assertEqual(out["repetition"].item(), 0.0)

    def test_coherence_of_a_seen_bigram_uses_add_one_smoothing(self):
        # Stream 1 2 1 2 1 3: count(1,2) = 2 and 3 bigrams start with 1 -> p = 3 / (3 + 10).
        out = compute(self.rc, new=torch.tensor([2]), prev=torch.tensor([1]))
        self.assertAlmostEqual(out["coherence"].item(), 1 + math.log(3 / 13) / math.log(V), places=5)

    def test_coherence_of_an_unseen_bigram_clips_to_zero(self):
        out = compute(self.rc, new=torch.tensor([5, 1]), prev=torch.tensor([1, 9]), batch=2)
        torch.testing.assert_close(out["coherence"], torch.zeros(2))

    def test_without_statistics_coherence_is_constant_and_construction_warns(self):
        with self.assertWarns(UserWarning):
            rc = RewardComputer(rl_config(), V)
        out = compute(rc, new=torch.tensor([2, 5]), prev=torch.tensor([1, 1]), batch=2)
        self.assertEqual(out["coherence"].unique().numel(), 1)

    def test_total_is_weighted_sum_with_repetition_subtracted(self):
        recent = torch.full((2, 10), -1)
        recent[1, -2:] = 2
        out = compute(self.rc, logprob=torch.log(torch.tensor([0.1, 0.1])), new=torch.tensor([2, 2]),
                      prev=torch.tensor([1, 1]), recent=recent, batch=2)
        w = self.rc.weights
        expected = (w["perplexity"] * out["perplexity"] + w["diversity"] * out["diversity"]
                    + w["sampling"] * out["sampling"] + w["coherence"] * out["coherence"]
                    - w["repetition"] * out["repetition"])
        torch.testing.assert_close(out["total"], expected)
        self.assertAlmostEqual(out["total"][0].item() - out["total"][1].item(), w["repetition"] * 0.5, places=6)

    def test_every_output_is_a_batch_vector(self):
        out = compute(self.rc, batch=5)
        self.assertEqual(set(out), {"perplexity", "diversity", "sampling", "repetition", "coherence", "total"})
        for name, value in out.items():
            self.assertEqual(value.shape, (5,), name)

    def test_rewards_carry_no_gradient(self):
        logits = torch.zeros(1, V, requires_grad=True)
        out = compute(self.rc, modulated=logits, sampling=logits * 2)
        self.assertFalse(out["total"].requires_grad)


class TestBigramStatistics(unittest.TestCase):
    def test_keys_are_sorted_and_counts_match(self):
        stats = stats_from([1, 2, 1, 2, 1, 3])
        self.assertIsInstance(stats, BigramStatistics)
        self.assertEqual(stats.bigram_keys.tolist(), [1 * V + 2, 1 * V + 3, 2 * V + 1])
        self.assertEqual(stats.bigram_counts.tolist(), [2, 1, 2])
        self.assertEqual(stats.unigram_counts[1], 3)  # bigrams starting with token 1
        self.assertEqual(len(stats.unigram_counts), V)

    def test_full_gpt2_vocabulary_ids_do_not_overflow_uint16(self):
        vocab = 50257
        stream = [50256, 50000, 50256, 50000, 50256]
        rc = RewardComputer(rl_config(), vocab, stats_from(stream, vocab))
        out = rc.compute(torch.zeros(2), torch.zeros(2, vocab), torch.zeros(2, vocab),
                         new_token=torch.tensor([50000, 50256]), prev_token=torch.tensor([50256, 50000]),
                         recent_tokens=torch.full((2, 10), -1))
        p = 3 / (2 + vocab)  # count(50256, 50000) = 2, two bigrams start with 50256
        self.assertAlmostEqual(out["coherence"][0].item(), max(0.0, 1 + math.log(p) / math.log(vocab)), places=5)
        self.assertGreater(out["coherence"][0].item(), 0.0)

    def test_too_short_or_out_of_vocabulary_streams_are_rejected(self):
        with self.assertRaises(ValueError):
            stats_from([1])
        with self.assertRaises(ValueError):
            stats_from([1, V])


class TestWeightModes(unittest.TestCase):
    def setUp(self):
        self.stats = stats_from([1, 2, 1, 2, 1, 3])

    def test_default_weights_come_from_the_config_and_are_settable(self):
        rc = RewardComputer(rl_config(), V, self.stats)
        self.assertEqual(rc.weights, {"perplexity": 0.35, "diversity": 0.15, "sampling": 0.15,
                                      "repetition": 0.20, "coherence": 0.15})
        before = compute(rc)["total"]
        rc.weights["diversity"] += 0.1
        after = compute(rc)
        torch.testing.assert_close(after["total"] - before, 0.1 * after["diversity"])

    def test_lagrangian_mode_zeroes_diversity_and_repetition_and_keeps_the_total_weight(self):
        rc = RewardComputer(rl_config(), V, self.stats)
        rc.set_lagrangian_mode()
        self.assertEqual(rc.weights["diversity"], 0.0)
        self.assertEqual(rc.weights["repetition"], 0.0)
        self.assertAlmostEqual(rc.weights["perplexity"], 0.35 / 0.65)
        self.assertAlmostEqual(rc.weights["sampling"], 0.15 / 0.65)
        self.assertAlmostEqual(sum(rc.weights.values()), 1.0)

    def test_cost_is_the_shortfall_of_diversity_below_the_threshold(self):
        rc = RewardComputer(rl_config(RL_DIVERSITY_CONSTRAINT_THRESHOLD=0.5), V, self.stats)
        torch.testing.assert_close(rc.cost(torch.tensor([0.3, 0.5, 0.9])), torch.tensor([0.2, 0.0, 0.0]))

    def test_ablation_disables_a_component_and_renormalises_the_rest(self):
        rc = AblationRewardComputer(rl_config(), V, self.stats, enable_perplexity=False)
        self.assertEqual(rc.weights["perplexity"], 0.0)
        self.assertAlmostEqual(rc.weights["repetition"], 0.20 / 0.65)
        self.assertAlmostEqual(sum(rc.weights.values()), 1.0)
        out = compute(rc, logprob=torch.tensor([-3.0]))
        expected = sum(rc.weights[k] * out[k] for k in ("diversity", "sampling", "coherence")) \
            - rc.weights["repetition"] * out["repetition"]
        torch.testing.assert_close(out["total"], expected)

    def test_ablation_with_everything_enabled_keeps_the_config_weights(self):
        rc = AblationRewardComputer(rl_config(), V, self.stats)
        self.assertEqual(rc.weights, RewardComputer(rl_config(), V, self.stats).weights)

    def test_ablation_refuses_to_run_without_bigram_statistics(self):
        with self.assertRaises(ValueError):
            AblationRewardComputer(rl_config(), V, None)

    def test_ablation_refuses_to_disable_everything(self):
        with self.assertRaises(ValueError):
            AblationRewardComputer(rl_config(), V, self.stats, enable_perplexity=False, enable_diversity=False,
                                   enable_sampling=False, enable_repetition=False, enable_coherence=False)


class TestBatchedAtFullVocabulary(unittest.TestCase):
    def test_sixteen_envs_at_gpt2_vocabulary_in_one_call(self):
        vocab = 50257
        rng = np.random.default_rng(0)
        rc = RewardComputer(rl_config(), vocab, stats_from(rng.integers(0, vocab, 20000), vocab))
        logits = torch.randn(16, vocab)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = rc.compute(torch.log_softmax(logits, -1)[:, 0], logits, logits, torch.randint(0, vocab, (16,)),
                             torch.randint(0, vocab, (16,)), torch.randint(-1, vocab, (16, 10)))
        self.assertTrue(bool(torch.isfinite(out["total"]).all()))


if __name__ == "__main__":
    unittest.main()
