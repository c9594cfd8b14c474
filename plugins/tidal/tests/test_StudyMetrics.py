"""Tests for StudyMetrics: per-prompt held-out measures, corpus diversity, the frontier and the paired verdict.

Synthetic data with known answers: families on a line quality = 1 − diversity, prompts with shared difficulty.
"""
from __future__ import annotations

import time
import unittest

import numpy as np
import sacrebleu

from plugins.tidal.DataPipeline import EOT_TOKEN_ID, TinyTales, encode_prompt
from plugins.tidal.StudyMetrics import (
    _as_rows,
    _frontier_at,
    bootstrap_mean_ci,
    corpus_measures,
    distinct_n,
    frontier_gap,
    measure,
    pareto_frontier,
    self_bleu,
)
from plugins.tidal.tests.test_Judges import tiny_judge

EOS = 5  # the tiny judge's vocabulary is 0..5


def interpolate(frontier: list[tuple[float, float]], diversity: float) -> float | None:
    """The frontier's quality at `diversity` through the vectorised path `frontier_gap` uses; None outside it."""
    value = _frontier_at(*_as_rows(frontier), np.array([float(diversity)]))[0]
    return None if np.isnan(value) else float(value)


class MeasureTest(unittest.TestCase):
    def setUp(self):
        self.judge = tiny_judge(4, bos_id=2)

    def test_judge_nll_averages_per_token_nll_over_samples_and_stops_at_eos(self):
        prompts = [[0, 1], [3]]
        samples = [[[2, 0, 1], [3, 4, EOS, 1, 1]], [[4, 3, 4, EOS]]]
        out = measure(prompts, samples, self.judge, eos_id=EOS)
        first = np.mean([-self.judge.score([0, 1], [2, 0, 1]).mean(), -self.judge.score([0, 1], [3, 4, EOS]).mean()])
        self.assertAlmostEqual(out["judge_nll"][0], first)
        self.assertAlmostEqual(out["judge_nll"][1], -self.judge.score([3], [4, 3, 4, EOS]).mean())
        np.testing.assert_allclose(out["length"], [2.5, 3.0])
        np.testing.assert_allclose(out["eot_rate"], [0.5, 1.0])

    def test_set_distinct_2_is_one_over_k_for_identical_and_one_for_disjoint_samples(self):
        same = [[0, 1, 2, 3, 4]] * 4
        disjoint = [[0, 1, 2], [3, 4, 0], [2, 2, 4], [4, 4, 1]]
        out = measure([[0], [0]], [same, disjoint], self.judge, eos_id=EOS)
        np.testing.assert_allclose(out["set_distinct_2"], [0.25, 1.0])

    def test_rep_4_and_precision(self):
        looping = [0, 1, 0, 1, 0, 1, 0, 1]  # 5 four-grams, 2 distinct
        seen = [3, 4, 3, 4, 0]  # after the prompt [2], every 4-gram is in the judge's corpus
        out = measure([[2]], [[looping, seen]], self.judge, eos_id=EOS)
        self.assertAlmostEqual(out["rep_4"][0], np.mean([1 - 2 / 5, 0.0]))
        self.assertEqual(self.judge.precision(seen, 4, context=[2]), 1.0)
        self.assertAlmostEqual(out["prec_4"][0], np.mean([self.judge.precision(looping, 4, context=[2]), 1.0]))
        out3 = measure([[2]], [[looping, seen]], self.judge, eos_id=EOS, precision_n=3)
        self.assertAlmostEqual(out3["prec_3"][0], np.mean([self.judge.precision(t, 3, [2]) for t in (looping, seen)]))

    def test_every_measure_is_one_value_per_prompt(self):
        out = measure([[0], [1], [2]], [[[1, 2]], [[EOS]], [[3, 4, 0, 1, 2]]], self.judge, eos_id=EOS)
        for name in ("judge_nll", "prec_4", "set_distinct_2", "rep_4", "length", "eot_rate"):
            self.assertEqual(out[name].shape, (3,), name)
        self.assertTrue(np.isnan(out["set_distinct_2"][1]))  # an immediate EOT has no bigram
        with self.assertRaises(ValueError):
            measure([[0]], [[[1]], [[2]]], self.judge, eos_id=EOS)


class CorpusMeasuresTest(unittest.TestCase):
    def test_distinct_n_counts_ngrams_within_texts_only(self):
        self.assertEqual(distinct_n([[1, 2, 3], [1, 2, 3]], 2), 0.5)
        self.assertEqual(distinct_n([[1, 2], [3, 1]], 2), 1.0)  # (2, 3) spans two texts and is no bigram
        self.assertTrue(np.isnan(distinct_n([[1]], 2)))

    def test_self_bleu_of_identical_texts_is_100(self):
        self.assertAlmostEqual(self_bleu(["the cat sat on the mat ."] * 5), 100.0)

    def test_self_bleu_equals_sacrebleu_sentence_bleu_against_the_others(self):
        texts = [s.split("\n")[0] for s in TinyTales(3).stories(0, 12)] + ["", "Once upon a time."]
        expected = np.mean([sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:]).score for i, t in enumerate(texts)])
        self.assertAlmostEqual(self_bleu(texts), expected, places=9)

    def test_corpus_measures_use_a_fixed_number_of_samples(self):
        stories = [encode_prompt(s)[:40] + [EOT_TOKEN_ID, 11, 11] for s in TinyTales(3).stories(0, 30)]
        out = corpus_measures(stories, num_samples=20)
        self.assertEqual(out["num_samples"], 20)
        truncated = [s[:40] for s in stories[:20]]
        for n in (1, 2, 3):
            self.assertAlmostEqual(out[f"distinct_{n}"], distinct_n(truncated, n))
        self.assertTrue(0.0 < out["self_bleu"] < 100.0)
        with self.assertRaises(ValueError):
            corpus_measures(stories, num_samples=31)


class FrontierTest(unittest.TestCase):
    def test_pareto_frontier_keeps_non_dominated_points_sorted_by_diversity(self):
        points = [(0.5, 0.5), (0.2, 0.9), (0.4, 0.4), (0.8, 0.1), (0.5, 0.3), (0.8, 0.1), (0.1, 0.85)]
        self.assertEqual(pareto_frontier(points), [(0.2, 0.9), (0.5, 0.5), (0.8, 0.1)])

    def test_interpolate_is_linear_inside_and_none_outside(self):
        frontier = [(0.2, 0.8), (0.6, 0.4)]
        self.assertAlmostEqual(interpolate(frontier, 0.4), 0.6)
        self.assertAlmostEqual(interpolate(frontier, 0.2), 0.8)
        self.assertAlmostEqual(interpolate(frontier, 0.6), 0.4)
        self.assertIsNone(interpolate(frontier, 0.7))
        self.assertIsNone(interpolate(frontier, 0.1))
        self.assertEqual(interpolate([(0.3, 0.5)], 0.3), 0.5)


def synthetic(num_prompts: int = 300, seed: int = 0):
    """Families on the line quality = 1 − diversity (and a worse one below), per-prompt values sharing a prompt
    difficulty (sd 0.3) much larger than each point's own noise (sd 0.05): pairing is what makes small gaps visible."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 0.3, num_prompts)

    def point(diversity: float, quality: float) -> dict:
        return {"quality": quality + difficulty + rng.normal(0, 0.05, num_prompts),
                "diversity": diversity + rng.normal(0, 0.05, num_prompts)}

    families = {"temperature": [point(d, 1.0 - d) for d in (0.2, 0.35, 0.5, 0.65, 0.8)],
                "top_k": [point(d, 0.8 - d) for d in (0.3, 0.5, 0.7)]}
    return point, families


class FrontierGapTest(unittest.TestCase):
    def test_a_point_above_the_frontier_wins_with_a_ci_above_zero(self):
        point, families = synthetic()
        result = frontier_gap(point(0.5, 0.53), families, samples=1000, seed=0)
        self.assertEqual(result["verdict"], "learned above the frontier")
        self.assertGreater(result["ci"][0], 0.0)
        self.assertAlmostEqual(result["gap"], 0.03, delta=0.015)
        self.assertEqual(result["best_family"], "temperature")
        self.assertAlmostEqual(result["at_diversity"], 0.5, delta=0.01)
        self.assertGreater(result["per_family"]["top_k"], result["per_family"]["temperature"])

    def test_a_point_on_the_frontier_is_no_significant_difference(self):
        point, families = synthetic()
        result = frontier_gap(point(0.5, 0.5), families, samples=1000, seed=0)
        self.assertEqual(result["verdict"], "no significant difference")
        self.assertLess(result["ci"][0], 0.0)
        self.assertGreater(result["ci"][1], 0.0)

    def test_a_dominated_point_is_below_the_frontier(self):
        point, families = synthetic()
        result = frontier_gap(point(0.5, 0.4), families, samples=1000, seed=0)
        self.assertEqual(result["verdict"], "frontier above learned")
        self.assertLess(result["ci"][1], 0.0)

    def test_a_point_less_diverse_than_every_family_is_outside_the_range(self):
        point, families = synthetic()
        result = frontier_gap(point(0.05, 0.99), families, samples=200, seed=0)
        self.assertEqual(result["verdict"], "outside the frontier's range")
        self.assertIsNone(result["gap"])
        self.assertIsNone(result["per_family"]["temperature"])

    def test_a_resample_that_drops_below_a_compared_family_is_not_scored_against_the_others(self):
        # the learned point sits on the low edge of the strong family (temperature starts at 0.2); a weak family
        # (quality 0.1 lower) covers it everywhere. Resamples that push it below 0.2 must not count as easy wins over
        # the weak family alone: more than 5 % of them do, so the verdict is "outside", not a win
        point, families = synthetic()
        weak = {"weak": [point(d, 0.8 - d - 0.1) for d in (0.0, 0.1, 0.2, 0.4)]}
        result = frontier_gap(point(0.2, 0.81), {**families, **weak}, samples=500, seed=0)
        self.assertGreater(result["outside_share"], 0.05)
        self.assertEqual(result["verdict"], "outside the frontier's range")

    def test_a_point_below_one_familys_range_is_not_scored_against_the_others(self):
        # top_k's grid starts at diversity 0.3: at 0.25 only temperature reaches the point, and top_k might do better
        # there than its grid shows, so there is no verdict, and the report names the family that falls short
        point, families = synthetic()
        result = frontier_gap(point(0.25, 0.9), families, samples=200, seed=0)
        self.assertEqual(result["verdict"], "outside the frontier's range")
        self.assertEqual(result["short_families"], ["top_k"])
        self.assertIsNone(result["gap"])

    def test_below_a_dominated_low_diversity_point_the_family_is_held_at_its_first_frontier_point(self):
        # the family reaches diversity 0.1 only with worse text than its point at 0.3, which dominates it: at 0.2 the
        # family is credited with the 0.3 point's quality (it gets that quality with more diversity)
        point, _ = synthetic()
        family = {"temperature": [point(0.1, 0.2), point(0.3, 0.7), point(0.6, 0.4)]}
        result = frontier_gap(point(0.2, 0.8), family, samples=300, seed=0)
        self.assertEqual(result["verdict"], "learned above the frontier")
        self.assertAlmostEqual(result["gap"], 0.1, delta=0.02)

    def test_beyond_the_most_diverse_point_a_family_is_held_at_that_points_quality(self):
        # no family reaches diversity 0.95; each is credited with its most diverse point's quality, which its
        # frontier (falling with diversity) could only lower further out: the comparison favours the families
        point, families = synthetic()
        result = frontier_gap(point(0.95, 0.5), families, samples=500, seed=0)
        self.assertEqual(result["verdict"], "learned above the frontier")
        self.assertAlmostEqual(result["gap"], 0.5 - 0.2, delta=0.03)  # temperature's most diverse point: (0.8, 0.2)
        self.assertAlmostEqual(result["per_family"]["top_k"], 0.5 - 0.1, delta=0.03)
        worse = frontier_gap(point(0.95, 0.1), families, samples=500, seed=0)
        self.assertEqual(worse["verdict"], "frontier above learned")

    def test_point_estimates_agree_with_the_scalar_frontier(self):
        point, families = synthetic(seed=4)
        learned = point(0.42, 0.6)
        result = frontier_gap(learned, families, samples=50, seed=0)
        at = learned["diversity"].mean()
        for name, points in families.items():
            frontier = pareto_frontier([(p["diversity"].mean(), p["quality"].mean()) for p in points])
            self.assertAlmostEqual(result["per_family"][name], learned["quality"].mean() - interpolate(frontier, at))
        self.assertAlmostEqual(result["gap"], min(result["per_family"].values()))

    def test_same_seed_same_interval(self):
        point, families = synthetic()
        learned = point(0.5, 0.52)
        self.assertEqual(frontier_gap(learned, families, 300, seed=3), frontier_gap(learned, families, 300, seed=3))

    def test_mismatched_or_non_finite_inputs_are_rejected(self):
        point, families = synthetic()
        short = {name: values[:10] for name, values in point(0.5, 0.5).items()}
        with self.assertRaises(ValueError):
            frontier_gap(short, families, 100, seed=0)
        broken = point(0.5, 0.5)
        broken["quality"][3] = np.nan
        with self.assertRaises(ValueError):
            frontier_gap(broken, families, 100, seed=0)

    def test_a_thousand_resamples_of_forty_points_over_512_prompts_take_seconds(self):
        rng = np.random.default_rng(0)
        families = {f"family_{f}": [{"quality": rng.normal(1 - d, 0.1, 512), "diversity": rng.normal(d, 0.05, 512)}
                                    for d in np.linspace(0.1, 0.9, 8)] for f in range(5)}
        learned = {"quality": rng.normal(0.5, 0.1, 512), "diversity": rng.normal(0.5, 0.05, 512)}
        start = time.perf_counter()
        frontier_gap(learned, families, samples=1000, seed=0)
        self.assertLess(time.perf_counter() - start, 5.0)


class BootstrapMeanTest(unittest.TestCase):
    def test_interval_covers_the_mean_and_shrinks_with_more_prompts(self):
        rng = np.random.default_rng(0)
        small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
        lo_s, hi_s = bootstrap_mean_ci(small, samples=1000, seed=0)
        lo_l, hi_l = bootstrap_mean_ci(large, samples=1000, seed=0)
        self.assertLess(lo_s, small.mean())
        self.assertGreater(hi_s, small.mean())
        self.assertLess(hi_l - lo_l, (hi_s - lo_s) / 3)
        self.assertEqual(bootstrap_mean_ci(small, 1000, seed=0), (lo_s, hi_s))


if __name__ == "__main__":
    unittest.main()
