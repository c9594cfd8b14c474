"""Ablation: the decoding baselines, the text metrics, and one paired study over every policy (SPEC §7, §14)."""
from __future__ import annotations

import copy
import json
import math
import unittest
import warnings

import numpy as np
import torch

from plugins.tidal.Ablation import (
    COMPONENTS, TIMING_KEYS, MinPDecoder, MirostatV2Decoder, PlainDecoder, bootstrap_ci, distinct_n,
    format_ablation_table, has_bigram_statistics, rep_n, run_ablation_study, trajectory_report,
)
from plugins.tidal.GatingModulator import GatingModulator
from plugins.tidal.GatingPolicyAgent import create_agent
from plugins.tidal.RewardComputer import RewardComputer
from plugins.tidal.TransformerLM import TransformerLM, apply_repetition_penalty, filter_logits
from tests.support import TempDirTestCase, rl_config, tiny_config

VOCAB = 50257  # the environment ends episodes at <|endoftext|> = 50256, so the tiny model keeps GPT-2's vocabulary


def _strip_timings(obj):
    """The results without wall-clock fields, which legitimately differ between two identical runs."""
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip_timings(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------- decoders
class PlainDecoderTest(unittest.TestCase):
    def test_sampling_logits_equal_filter_logits(self):
        logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
        seen = torch.zeros(3, 40, dtype=torch.bool)
        decoder = PlainDecoder(temperature=0.7, top_k=10, top_p=0.8)
        modulated, sampling, effects = decoder.decode(logits, seen, torch.full((3,), 0.5))
        torch.testing.assert_close(modulated, logits / 0.7)
        torch.testing.assert_close(sampling, filter_logits(logits, temperature=0.7, top_k=10, top_p=0.8))
        self.assertEqual(effects.top_k.tolist(), [10, 10, 10])

    def test_repetition_penalty_applies_before_temperature(self):
        logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(1))
        seen = torch.zeros(2, 30, dtype=torch.bool)
        seen[:, :5] = True
        modulated, sampling, _ = PlainDecoder(1.3, 0, 0.9, repetition_penalty=1.5).decode(logits, seen, torch.zeros(2))
        penalized = apply_repetition_penalty(logits, seen, 1.5)
        torch.testing.assert_close(modulated, penalized / 1.3)
        torch.testing.assert_close(sampling, filter_logits(penalized, temperature=1.3, top_p=0.9))

    def test_m_does_not_change_the_plain_decoder(self):
        logits = torch.randn(2, 30, generator=torch.Generator().manual_seed(2))
        seen = torch.zeros(2, 30, dtype=torch.bool)
        decoder = PlainDecoder(1.0, 5, 1.0)
        a = decoder.decode(logits, seen, torch.zeros(2))[1]
        b = decoder.decode(logits, seen, torch.ones(2))[1]
        torch.testing.assert_close(a, b)

    def test_at_modulation_takes_the_modulators_settings_without_penalty(self):
        modulator = GatingModulator(rl_config())
        decoder = PlainDecoder.at_modulation(modulator, 0.5)
        effects = modulator(torch.tensor([0.5]))
        self.assertAlmostEqual(decoder.temperature, float(effects.temperature[0]), places=6)
        self.assertEqual(decoder.top_k, int(effects.top_k[0]))
        self.assertAlmostEqual(decoder.top_p, float(effects.top_p[0]), places=6)
        self.assertEqual(decoder.repetition_penalty, 1.0)


class MinPDecoderTest(unittest.TestCase):
    def test_keeps_exactly_the_tokens_at_or_above_min_p_times_p_max(self):
        probs = torch.tensor([[0.5, 0.2, 0.06, 0.04, 0.2],     # threshold 0.05: drop only 0.04
                              [0.05, 0.9, 0.03, 0.01, 0.01]])  # threshold 0.09: keep only 0.9
        _, sampling, _ = MinPDecoder(min_p=0.1).decode(probs.log(), torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2))
        kept = torch.isfinite(sampling)
        self.assertEqual(kept.tolist(), [[True, True, True, False, True], [False, True, False, False, False]])
        torch.testing.assert_close(sampling[kept], probs.log()[kept])  # kept logits are untouched

    def test_threshold_applies_to_the_tempered_distribution(self):
        probs = torch.tensor([[0.5, 0.2, 0.06, 0.04, 0.2]])
        modulated, sampling, _ = MinPDecoder(min_p=0.1, temperature=2.0).decode(
            probs.log(), torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1))
        torch.testing.assert_close(modulated, probs.log() / 2.0)
        tempered = (probs.log() / 2.0).softmax(-1)
        expected = tempered >= 0.1 * tempered.max()
        self.assertEqual(torch.isfinite(sampling).tolist(), expected.tolist())  # T=2 flattens: all 5 survive
        self.assertTrue(bool(expected.all()))

    def test_rejects_min_p_outside_the_unit_interval(self):
        for bad in (0.0, -0.1, 1.5):
            with self.assertRaises(ValueError):
                MinPDecoder(min_p=bad)


class MirostatV2DecoderTest(unittest.TestCase):
    # p = [1/2, 1/4, 1/8, 1/8]: surprises 1, 2, 3, 3 bits
    PROBS = torch.tensor([[0.5, 0.25, 0.125, 0.125]])

    def _decoder(self, tau: float, rows: int = 1) -> MirostatV2Decoder:
        decoder = MirostatV2Decoder(tau=tau, eta=0.1)
        decoder.reset_rows(torch.arange(rows))
        return decoder

    def test_mu_starts_at_two_tau_and_truncates_by_surprise(self):
        decoder = self._decoder(tau=1.25)  # mu = 2.5 bits: keeps the 1- and 2-bit tokens
        self.assertEqual(decoder.mu.tolist(), [2.5])
        modulated, sampling, effects = decoder.decode(self.PROBS.log(), torch.zeros(1, 4, dtype=torch.bool),
                                                      torch.zeros(1))
        self.assertIsNone(effects)
        torch.testing.assert_close(modulated, self.PROBS.log())
        self.assertEqual(torch.isfinite(sampling).tolist(), [[True, True, False, False]])

    def test_mu_update_uses_the_surprise_under_the_truncated_distribution(self):
        decoder = self._decoder(tau=1.25)
        _, sampling, _ = decoder.decode(self.PROBS.log(), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1))
        decoder.observe(torch.tensor([1]), sampling)
        surprise = -math.log2(0.25 / 0.75)  # renormalised over the two kept tokens: 1/3 -> 1.585 bits
        self.assertAlmostEqual(float(decoder.mu[0]), 2.5 - 0.1 * (surprise - 1.25), places=5)

    def test_always_keeps_the_top_token(self):
        decoder = self._decoder(tau=0.1)  # mu = 0.2 bits, below even the top token's 1 bit
        _, sampling, _ = decoder.decode(self.PROBS.log(), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1))
        self.assertEqual(torch.isfinite(sampling).tolist(), [[True, False, False, False]])
        decoder.observe(torch.tensor([0]), sampling)  # the only token: surprise 0 -> mu rises by eta * tau
        self.assertAlmostEqual(float(decoder.mu[0]), 0.2 + 0.1 * 0.1, places=6)

    def test_rows_keep_their_own_mu_and_reset_rows_restores_two_tau(self):
        decoder = self._decoder(tau=1.25, rows=3)
        logits = self.PROBS.log().expand(3, 4)
        _, sampling, _ = decoder.decode(logits, torch.zeros(3, 4, dtype=torch.bool), torch.zeros(3))
        decoder.observe(torch.tensor([0, 1, 0]), sampling)
        self.assertNotAlmostEqual(float(decoder.mu[0]), float(decoder.mu[1]))
        decoder.reset_rows(torch.tensor([1]))
        self.assertAlmostEqual(float(decoder.mu[1]), 2.5)
        self.assertNotAlmostEqual(float(decoder.mu[0]), 2.5)

    def test_surprise_is_measured_in_bits(self):
        decoder = self._decoder(tau=5.0)  # mu = 10 bits keeps everything
        _, sampling, _ = decoder.decode(self.PROBS.log(), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1))
        self.assertTrue(bool(torch.isfinite(sampling).all()))
        decoder.observe(torch.tensor([2]), sampling)  # 3 bits exactly, not 3·ln 2 nats
        self.assertAlmostEqual(float(decoder.mu[0]), 10.0 - 0.1 * (3.0 - 5.0), places=5)


# ------------------------------------------------------------------------------------------- metrics
class MetricsTest(unittest.TestCase):
    def test_distinct_n_is_corpus_level_and_never_crosses_generations(self):
        generations = [[1, 2, 3], [3, 1, 2]]
        self.assertAlmostEqual(distinct_n(generations, 1), 3 / 6)
        self.assertAlmostEqual(distinct_n(generations, 2), 3 / 4)  # (1,2) (2,3) (3,1) (1,2); (3,3) is not one
        self.assertAlmostEqual(distinct_n(generations, 3), 2 / 2)
        self.assertIsNone(distinct_n([[1, 2]], 3))

    def test_rep_n_is_the_share_of_repeated_ngrams(self):
        self.assertAlmostEqual(rep_n([1, 2, 3, 4, 1, 2, 3, 4], 4), 1 - 4 / 5)
        self.assertEqual(rep_n([1, 2, 3, 4, 5], 4), 0.0)
        self.assertIsNone(rep_n([1, 2, 3], 4))

    def test_bootstrap_ci_is_seeded_and_brackets_the_mean(self):
        values = np.random.default_rng(0).normal(size=50)
        low, high = bootstrap_ci(values, samples=200, seed=3)
        self.assertEqual((low, high), bootstrap_ci(values, samples=200, seed=3))
        self.assertLess(low, values.mean())
        self.assertGreater(high, values.mean())


# ------------------------------------------------------------------------------------------- the study
def _reward_computer(model: TransformerLM, prompts: list[list[int]], config: dict) -> RewardComputer:
    """Bigram statistics from the model's own greedy continuations, repeated so that their counts stand out against
    add-one smoothing over 50,257 tokens: the generated bigrams are then partly well known and coherence genuinely
    varies from token to token (random statistics would leave it near 0 everywhere)."""
    greedy = []
    for p in prompts:
        greedy.extend(model.generate(torch.tensor([p]), 12, temperature=0.0)[0].tolist())
    stream = np.concatenate([np.tile(greedy, 500), np.random.default_rng(0).integers(0, VOCAB, 2000)])
    return RewardComputer(config, VOCAB, RewardComputer.bigram_statistics_from_tokens(stream, VOCAB))


class RunAblationStudyTest(TempDirTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        torch.manual_seed(0)
        cls.config = rl_config(RL_MAX_EPISODE_LENGTH=6, RL_NUM_ENVS=4, RL_ABLATION_GRID_POINTS=3,
                               RL_ABLATION_BOOTSTRAP_SAMPLES=50)
        cls.model = TransformerLM(VOCAB, tiny_config()).eval()
        rng = np.random.default_rng(1)
        cls.prompts = [rng.integers(0, VOCAB - 1, int(n)).tolist() for n in (3, 5, 10, 4)]
        cls.reward_computer = _reward_computer(cls.model, cls.prompts, cls.config)
        cls.agent = create_agent(cls.config)
        cls.results = cls.study(agent=cls.agent)
        # without an agent, 3 prompts in waves of 2 (one full, one partial) and in a single wave of 3
        cls.in_waves = cls.study(prompts=cls.prompts[:3], seeds=[0], num_envs=2)
        cls.in_one_wave = cls.study(prompts=cls.prompts[:3], seeds=[0], num_envs=3)

    @classmethod
    def study(cls, prompts=None, **kwargs) -> dict:
        return run_ablation_study(cls.model, cls.prompts if prompts is None else prompts, cls.config,
                                  cls.reward_computer, progress=False, **kwargs)

    def test_every_policy_is_reported(self):
        expected = {"random", "fixed_0.5", "best_constant", "learned_stochastic", "learned_deterministic",
                    "plain_top_k_top_p", "min_p", "mirostat_v2"}
        self.assertEqual(set(self.results["policies"]), expected)
        config = self.results["config"]
        self.assertEqual(config["seeds"], [0, 1])
        self.assertEqual(config["num_prompts"], 4)
        self.assertEqual(config["episode_length"], 6)
        self.assertIsInstance(self.results["timestamp"], float)

    def test_every_policy_plays_every_prompt_once_per_seed(self):
        for name, policy in self.results["policies"].items():
            self.assertEqual(policy["episodes"], 8, name)
            self.assertGreater(policy["tokens_per_second"], 0.0, name)
        for name, policy in self.in_waves["policies"].items():  # the partial last wave included
            self.assertEqual(policy["episodes"], 3, name)
            self.assertEqual(policy["generated_tokens"], 3 * 6, name)

    def test_confidence_intervals_contain_the_mean(self):
        for name, policy in self.results["policies"].items():
            stats = [policy["reward"], *(policy["components"][c] for c in COMPONENTS)]
            for s in stats:
                self.assertLessEqual(s["ci_low"], s["mean"] + 1e-9, name)
                self.assertGreaterEqual(s["ci_high"], s["mean"] - 1e-9, name)
                self.assertGreaterEqual(s["std"], 0.0, name)

    def test_the_grid_always_contains_the_fixed_half(self):
        # A 4-point grid (0, 1/3, 2/3, 1) lacks 0.5; the fixed-0.5 baseline must still compete for "best constant".
        config = dict(self.config, RL_ABLATION_GRID_POINTS=4)
        results = run_ablation_study(self.model, self.prompts[:2], config, self.reward_computer, seeds=[0],
                                     progress=False)
        self.assertEqual([round(g["m"], 4) for g in results["grid"]], [0.0, 0.3333, 0.5, 0.6667, 1.0])
        best = max(g["mean_reward"] for g in results["grid"])
        self.assertGreaterEqual(best, results["policies"]["fixed_0.5"]["reward"]["mean"])

    def test_best_constant_is_the_best_point_of_the_grid(self):
        grid = self.results["grid"]
        self.assertEqual([g["m"] for g in grid], [0.0, 0.5, 1.0])
        best = max(grid, key=lambda g: g["mean_reward"])
        self.assertEqual(self.results["best_constant_m"], best["m"])
        self.assertAlmostEqual(self.results["policies"]["best_constant"]["reward"]["mean"], best["mean_reward"])
        self.assertEqual(self.results["policies"]["best_constant"]["mean_m"], best["m"])

    def test_fixed_half_matches_the_grid_point(self):
        half = next(g for g in self.results["grid"] if g["m"] == 0.5)
        self.assertAlmostEqual(self.results["policies"]["fixed_0.5"]["reward"]["mean"], half["mean_reward"])

    def test_decoders_have_no_modulation_and_modulated_policies_do(self):
        policies = self.results["policies"]
        for name in ("plain_top_k_top_p", "min_p", "mirostat_v2"):
            self.assertIsNone(policies[name]["mean_m"], name)
        for name in ("random", "learned_stochastic", "learned_deterministic"):
            self.assertTrue(0.0 <= policies[name]["mean_m"] <= 1.0, name)

    def test_text_metrics_lie_in_the_unit_interval(self):
        for name, policy in self.results["policies"].items():
            for key in ("distinct_1", "distinct_2", "distinct_3", "rep_4"):
                self.assertTrue(0.0 <= policy[key] <= 1.0, (name, key, policy[key]))
            self.assertGreaterEqual(policy["entropy"], 0.0)

    def test_coherence_varies_across_tokens(self):
        """SPEC §14: with real bigram statistics coherence is not stuck at one value."""
        spreads = [p["components"]["coherence"]["std"] for p in self.results["policies"].values()]
        self.assertGreater(max(spreads), 0.01)
        means = {round(p["components"]["coherence"]["mean"], 6) for p in self.results["policies"].values()}
        self.assertGreater(len(means), 1)

    def test_learned_vs_best_constant_has_a_verdict_consistent_with_its_interval(self):
        comparison = self.results["learned_vs_best_constant"]
        self.assertEqual(comparison["best_constant_m"], self.results["best_constant_m"])
        self.assertLessEqual(comparison["ci_low"], comparison["difference"] + 1e-9)
        self.assertGreaterEqual(comparison["ci_high"], comparison["difference"] - 1e-9)
        expected = ("learned beats best constant" if comparison["ci_low"] > 0 else
                    "best constant beats learned" if comparison["ci_high"] < 0 else "no significant difference")
        self.assertEqual(comparison["verdict"], expected)
        learned = self.results["policies"][comparison["policy"]]["reward"]["mean"]
        best = self.results["policies"]["best_constant"]["reward"]["mean"]
        self.assertAlmostEqual(comparison["difference"], learned - best, places=9)
        self.assertIn("verdict", comparison["stochastic"])

    def test_same_prompts_and_seeds_give_identical_results_and_the_json_file(self):
        torch.rand(7)  # a different global RNG state before the second run must not matter
        rng_state = torch.get_rng_state()
        again = self.study(agent=self.agent, experiment_dir=self.tmp)
        self.assertTrue(torch.equal(rng_state, torch.get_rng_state()), "the study must leave the global RNG alone")
        self.assertEqual(_strip_timings(again), _strip_timings(self.results))
        path = self.tmp / "ablation_results.json"
        on_disk = json.loads(path.read_text(), parse_constant=lambda c: self.fail(f"non-strict JSON: {c}"))
        self.assertEqual(on_disk, json.loads(json.dumps(again)))

    def test_without_an_agent_there_are_no_learned_rows(self):
        self.assertNotIn("learned_stochastic", self.in_waves["policies"])
        self.assertNotIn("learned_deterministic", self.in_waves["policies"])
        self.assertIsNone(self.in_waves["learned_vs_best_constant"]["difference"])
        self.assertIn("mirostat_v2", format_ablation_table(self.in_waves))

    def test_results_do_not_depend_on_the_number_of_environments(self):
        """Prompt p always plays in the noise stream (seed, p), whichever wave and row it lands in."""
        self.assertEqual((self.in_waves["config"]["num_envs"], self.in_one_wave["config"]["num_envs"]), (2, 3))
        for name in ("fixed_0.5", "best_constant", "plain_top_k_top_p", "min_p", "mirostat_v2"):
            waves, one_wave = self.in_waves["policies"][name], self.in_one_wave["policies"][name]
            for key in ("distinct_1", "distinct_2", "rep_4"):
                self.assertEqual(waves[key], one_wave[key], (name, key))
            self.assertAlmostEqual(waves["reward"]["mean"], one_wave["reward"]["mean"], places=5)

    def test_an_episode_ended_by_endoftext_counts_only_its_own_steps(self):
        eager = copy.deepcopy(self.model)
        with torch.no_grad():
            eager.output_projection.bias[VOCAB - 1] = 100.0  # <|endoftext|> first, whatever the decoder
        results = run_ablation_study(eager, self.prompts, self.config, self.reward_computer, seeds=[0],
                                     progress=False)
        for name, policy in results["policies"].items():
            self.assertEqual(policy["episodes"], 4, name)  # the restarted rows' second episodes are ignored
            self.assertEqual(policy["mean_length"], 1.0, name)
            self.assertEqual(policy["terminated_fraction"], 1.0, name)
            self.assertEqual(policy["distinct_1"], 1 / 4, name)  # four generations of the single token 50256
            self.assertIsNone(policy["rep_4"], name)

    def test_refuses_a_reward_computer_without_bigram_statistics(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blind = RewardComputer(self.config, VOCAB)
        self.assertFalse(has_bigram_statistics(blind))
        self.assertTrue(has_bigram_statistics(self.reward_computer))
        with self.assertRaisesRegex(ValueError, "bigram"):
            run_ablation_study(self.model, self.prompts, self.config, blind, progress=False)

    def test_refuses_empty_prompts_and_seeds(self):
        with self.assertRaises(ValueError):
            run_ablation_study(self.model, [], self.config, self.reward_computer, progress=False)
        with self.assertRaises(ValueError):
            run_ablation_study(self.model, [[1, 2], []], self.config, self.reward_computer, progress=False)
        with self.assertRaises(ValueError):
            run_ablation_study(self.model, self.prompts, self.config, self.reward_computer, seeds=[], progress=False)

    def test_table_lists_every_policy_and_the_verdict(self):
        table = format_ablation_table(self.results)
        for name in self.results["policies"]:
            self.assertIn(name, table)
        self.assertIn(self.results["learned_vs_best_constant"]["verdict"], table)
        widths = {len(line) for line in table.splitlines()[:len(self.results["policies"]) + 2]}
        self.assertEqual(len(widths), 1, "fixed-width rows")

    def test_results_are_not_mutated_by_formatting(self):
        before = copy.deepcopy(self.results)
        format_ablation_table(self.results)
        self.assertEqual(before, self.results)


class TrajectoryReportTest(TempDirTestCase):
    def test_report_covers_the_learned_policy_and_the_m_sweep(self):
        torch.manual_seed(0)
        config = rl_config(RL_MAX_EPISODE_LENGTH=6, RL_NUM_ENVS=4)
        model = TransformerLM(VOCAB, tiny_config()).eval()
        prompts = [[464, 3797, 3332], [7454, 2402, 257, 640]]
        report = trajectory_report(model, prompts, config, create_agent(config), bootstrap=20,
                                   experiment_dir=self.tmp)
        self.assertEqual(len(report["per_prompt"]), 2)
        for analyses in report["per_prompt"].values():
            self.assertEqual(len(analyses), 1)
            self.assertTrue(0.0 <= analyses[0]["mean"] <= 1.0)
        self.assertEqual(set(report["sweep"]), {"0.0", "0.5", "1.0"})
        self.assertIn("between", report["cross_prompt"])
        self.assertTrue((self.tmp / "trajectory_report.json").exists())


if __name__ == "__main__":
    unittest.main()
