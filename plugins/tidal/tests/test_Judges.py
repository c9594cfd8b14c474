"""Tests for Judges: held-out n-gram judges, disjoint from the generator's data and from each other.

Tiny corpora (a 6-token vocabulary, or a few hundred tinytales stories) keep the module fast.
"""
from __future__ import annotations

import tempfile
import time
import unittest
from pathlib import Path

import numpy as np
import torch

from core.errors import TidalError
from plugins.tidal.DataPipeline import EOT_TOKEN_ID, VOCAB_SIZE, TinyTales, encode_prompt, load_stories
from plugins.tidal.Judges import JUDGE_ROLES, NGramJudge, _corpus, build_judge
from plugins.tidal.tests.test_StudyData import TinyConfigCase, text_source_config

TINY_VOCAB = 6


def tiny_judge(order: int = 3, bos_id: int | None = None) -> NGramJudge:
    """A judge over a 6-token vocabulary where token 5 never occurs (so backoff must still give it mass)."""
    rng = np.random.default_rng(0)
    stream = np.concatenate([rng.integers(0, 3, 200), [3, 4, 3, 4, 0, 1, 2] * 20])
    return NGramJudge.from_tokens(stream, vocab_size=TINY_VOCAB, order=order, bos_id=bos_id)


def judge_corpus(lm_config: dict, role: str, num_stories: int) -> tuple[list[str], dict]:
    """The stories `build_judge` would train the judge of `role` on, and their provenance."""
    provenance, fetch = _corpus(lm_config, role, num_stories)
    return fetch(), provenance


def next_logprobs(judge: NGramJudge, history: list[int]) -> torch.Tensor:
    """log p(w | history) for every w of the vocabulary, through logprob_next."""
    rows = torch.tensor([history + [-1]] * judge.vocab_size, dtype=torch.long)
    lengths = torch.full((judge.vocab_size,), len(history), dtype=torch.long)
    return judge.logprob_next(rows, lengths, torch.arange(judge.vocab_size))


def kneser_ney_reference(judge: NGramJudge, history: list[int], w: int) -> float:
    """ln p(w | history) by the recursion of NGramJudge's docstring, looked up in plain dictionaries of its tables."""
    a, V, order = judge._arrays, judge.vocab_size, judge.order
    D, dense = a["discounts"], a["dense_1"]
    p = (max(dense[w] - D[1], 0) + D[1] * (dense > 0).sum() / V) / dense.sum()
    lead = [-1] * (order - 1) + ([] if judge.bos_id is None else [judge.bos_id]) + history
    for k in range(2, order + 1):
        context = lead[len(lead) - (k - 1):]
        if min(context) < 0:
            break
        h = 0
        for t in context:
            h = h * V + t
        totals = zip(a[f"hist_total_{k}"].tolist(), a[f"hist_types_{k}"].tolist(), strict=True)
        histories = dict(zip(a[f"hist_keys_{k}"].tolist(), totals, strict=True))
        if histories.get(h, (0, 0))[0] == 0:
            continue
        total, types = histories[h]
        count = dict(zip(a[f"keys_{k}"].tolist(), a[f"counts_{k}"].tolist(), strict=True)).get(h * V + w, 0)
        p = (max(count - D[k], 0) + D[k] * types * p) / total
    return float(np.log(p))


class NGramJudgeTest(unittest.TestCase):
    def test_next_token_distribution_sums_to_one_and_is_never_zero(self):
        for order, bos_id in ((1, None), (2, None), (3, None), (4, None), (3, 2), (4, 2)):
            judge = tiny_judge(order, bos_id)
            for history in ([], [0], [3, 4], [1, 2, 0], [5, 5, 5], [2, 5, 0, 1]):
                logp = next_logprobs(judge, history).double()
                self.assertAlmostEqual(logp.exp().sum().item(), 1.0, places=5, msg=f"order {order} {history}")
                self.assertTrue(torch.isfinite(logp).all())

    def test_lookups_equal_the_interpolated_kneser_ney_recursion_over_its_tables(self):
        # every order's n-grams and histories are found by batched searches over the tables; evaluate the recursion of
        # the class docstring with plain dictionaries instead, for every token after many histories
        rng = np.random.default_rng(5)
        for order, bos_id in ((2, None), (3, None), (4, 2), (4, None)):
            judge = NGramJudge.from_tokens(rng.integers(0, 40, 3000) % 23, vocab_size=25, order=order, bos_id=bos_id)
            for history in ([], [3], [5, 7], [1, 2, 3], [0, 22, 4, 9, 11], rng.integers(0, 23, 12).tolist()):
                with self.subTest(order=order, bos_id=bos_id, history=history):
                    expected = [kneser_ney_reference(judge, history, w) for w in range(judge.vocab_size)]
                    np.testing.assert_allclose(next_logprobs(judge, history).numpy(), expected, rtol=1e-5)

    def test_seen_continuations_get_most_mass(self):
        judge = tiny_judge(3)
        logp = next_logprobs(judge, [3])
        self.assertEqual(int(logp.argmax()), 4)  # 3 is always followed by 4 in the corpus
        self.assertGreater(logp[4].exp().item(), 0.5)

    def test_logprob_next_matches_score_on_the_same_text(self):
        judge = tiny_judge(4, bos_id=2)  # a start marker before the text, as real judges have
        context, continuation = [3, 4, 0], [1, 2, 3, 4, 5, 0]
        scored = judge.score(context, continuation)
        text = context + continuation
        lengths = torch.arange(len(context), len(text))
        history = torch.full((len(continuation), len(text)), -1, dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            history[row, :length] = torch.tensor(text[:length])
        stepped = judge.logprob_next(history, lengths, torch.tensor(continuation))
        np.testing.assert_allclose(stepped.numpy(), scored, rtol=1e-5)
        self.assertEqual(scored.shape, (len(continuation),))
        self.assertEqual(judge.score(context, []).shape, (0,))

    def test_score_many_matches_score(self):
        judge = tiny_judge(3)
        pairs = [([0, 1], [2, 3]), ([], [4]), ([3], []), ([1, 2, 0, 1], [2, 2, 5])]
        for (context, continuation), many in zip(pairs, judge.score_many(pairs), strict=True):
            np.testing.assert_allclose(many, judge.score(context, continuation))

    def test_precision_is_the_share_of_ngrams_seen_in_the_corpus(self):
        judge = tiny_judge(3)
        self.assertEqual(judge.precision([3, 4, 3, 4, 0], 2), 1.0)
        self.assertEqual(judge.precision([5, 5, 5], 2), 0.0)
        self.assertEqual(judge.precision([3, 5], 2), 0.0)
        self.assertEqual(judge.precision([4], 2, context=[3]), 1.0)  # the n-gram that joins the prompt counts
        self.assertTrue(np.isnan(judge.precision([4], 2)))
        with self.assertRaises(ValueError):
            judge.precision([1, 2, 3, 4], 4)

    def test_orders_and_token_ids_are_checked(self):
        with self.assertRaises(ValueError):
            NGramJudge.from_tokens(np.arange(10), vocab_size=TINY_VOCAB, order=2)
        with self.assertRaises(ValueError):
            NGramJudge.from_tokens(np.zeros(10, np.int64), vocab_size=TINY_VOCAB, order=5)

    def test_save_and_load_round_trip(self):
        judge = tiny_judge(3)
        with tempfile.TemporaryDirectory() as tmp:
            judge.save(Path(tmp) / "judge.npz")
            loaded = NGramJudge.load(Path(tmp) / "judge.npz")
        np.testing.assert_array_equal(loaded.score([0, 1], [2, 5, 3]), judge.score([0, 1], [2, 5, 3]))
        self.assertEqual(loaded.provenance, judge.provenance)


class JudgeCorpusTest(TinyConfigCase):
    BUILTIN_NUM_STORIES = 200

    def test_roles_share_no_story_with_each_other_or_the_generator(self):
        train, train_info = judge_corpus(self.config, "train", 300)
        evaluation, eval_info = judge_corpus(self.config, "eval", 300)
        generator = set(load_stories(self.config, "train")) | set(load_stories(self.config, "validation"))
        prompt_stories = set(TinyTales(int(self.config["SEED"])).stories(200, 1000))  # what StudyData cuts from
        self.assertEqual((len(set(train)), len(set(evaluation))), (300, 300))
        self.assertFalse(set(train) & set(evaluation))
        self.assertFalse((set(train) | set(evaluation)) & (generator | prompt_stories))
        self.assertEqual({train_info["role"], eval_info["role"]}, set(JUDGE_ROLES))
        self.assertNotEqual(train_info["seed"], eval_info["seed"])
        self.assertNotEqual(train_info["seed"], int(self.config["SEED"]))
        for info in (train_info, eval_info):
            self.assertEqual(info["num_stories"], 300)
            self.assertEqual(info["source"], "builtin:tinytales")
        with self.assertRaises(ValueError):
            judge_corpus(self.config, "generator", 10)

    def test_other_sources_use_disjoint_shards_beyond_the_lm_stories(self):
        config = text_source_config(self.tmp, 100, VALIDATION_SPLIT_RATIO=0.1, MAX_STORIES=50)
        full = load_stories(config | {"MAX_STORIES": None}, "train")
        lm_stories = set(load_stories(config, "train"))
        train, _ = judge_corpus(config, "train", 20)
        evaluation, _ = judge_corpus(config, "eval", 20)
        self.assertEqual(evaluation, full[-20:])
        self.assertEqual(train, full[-40:-20])
        self.assertFalse((set(train) | set(evaluation)) & lm_stories)
        with self.assertRaises(TidalError):  # the LM read the whole train split: no shard is held out
            judge_corpus(config | {"MAX_STORIES": None}, "eval", 20)
        with self.assertRaises(TidalError):  # the shards would reach into the LM's stories
            judge_corpus(config, "eval", 30)


class BuildJudgeTest(TinyConfigCase):
    BUILTIN_NUM_STORIES = 200

    def test_in_distribution_text_scores_better_than_shuffled_tokens(self):
        judge = build_judge(self.config, "eval", 400)
        story = encode_prompt(TinyTales(int(self.config["SEED"])).story(5000)) + [EOT_TOKEN_ID]
        shuffled = list(np.random.default_rng(0).permutation(story))
        self.assertLess(-judge.score(story[:10], story[10:]).mean() + 1.0,
                        -judge.score(story[:10], shuffled[10:]).mean())
        self.assertGreater(judge.precision(story, 4), 0.5)
        self.assertLess(judge.precision(shuffled, 4), 0.2)

    def test_second_build_comes_from_the_cache(self):
        judge = build_judge(self.config, "train", 300, order=3)
        self.assertEqual(len(list(Path(self.tmp).glob("*.npz"))), 1)
        start = time.perf_counter()
        again = build_judge(self.config, "train", 300, order=3)
        self.assertLess(time.perf_counter() - start, 0.5)
        self.assertEqual(again.provenance, judge.provenance)
        self.assertEqual((again.provenance["role"], again.order, again.vocab_size), ("train", 3, VOCAB_SIZE))
        np.testing.assert_array_equal(again.score([464], [3290, 13]), judge.score([464], [3290, 13]))
        build_judge(self.config, "eval", 300, order=3)  # another role is another cache entry
        self.assertEqual(len(list(Path(self.tmp).glob("*.npz"))), 2)

    def test_logprob_next_is_batched_over_rows_of_different_lengths(self):
        judge = build_judge(self.config, "eval", 300, order=4)
        texts = [encode_prompt(s)[:30] for s in TinyTales(99).stories(0, 64)]
        lengths = torch.tensor([5 + i % 20 for i in range(64)])
        history = torch.full((64, 40), -1, dtype=torch.long)
        for row, text in enumerate(texts):
            history[row, :lengths[row]] = torch.tensor(text[:lengths[row]])
        tokens = torch.tensor([text[length] for text, length in zip(texts, lengths.tolist(), strict=True)])
        batched = judge.logprob_next(history, lengths, tokens)
        one_by_one = [judge.score(text[:length], [text[length]])[0]
                      for text, length in zip(texts, lengths.tolist(), strict=True)]
        np.testing.assert_allclose(batched.numpy(), one_by_one, rtol=1e-5)
        self.assertEqual(batched.dtype, torch.float32)


if __name__ == "__main__":
    unittest.main()
