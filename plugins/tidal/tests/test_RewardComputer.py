"""The text-scoring reward: judge quality (not the generator's likelihood), n-gram and content repetition, and the
set-level overlap between samples of the same prompt."""
import unittest

import torch

from plugins.tidal.DataPipeline import get_tokenizer
from plugins.tidal.Judges import NGramJudge
from plugins.tidal.RewardComputer import COMPONENTS, RewardComputer, content_token_mask
from plugins.tidal.tests.support import rl_config

V = 50257
TOK = get_tokenizer()


def ids(text: str) -> list[int]:
    return TOK.encode_ordinary(text)


def make_computer(**overrides) -> RewardComputer:
    judge = NGramJudge.from_texts(["The cat sat on the mat. The dog ran to the park."] * 20, order=3)
    return RewardComputer(rl_config(**overrides), judge, content_token_mask(TOK, V))


def batch(rows: list[list[int]], prompt_lengths: list[int]):
    H = max(len(r) for r in rows) + 1
    history = torch.full((len(rows), H), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        history[i, :len(r)] = torch.tensor(r)
    return history, torch.tensor([len(r) for r in rows]), torch.tensor(prompt_lengths)


class TestRewardComputer(unittest.TestCase):
    def test_components_and_total(self):
        rc = make_computer()
        history, lengths, prompts = batch([ids("The cat sat on the")], [2])
        out = rc.compute(history, lengths, prompts, torch.tensor(ids(" mat")), torch.tensor([0]))
        self.assertEqual(set(out), {*COMPONENTS, "total"})
        self.assertEqual(rc.components, COMPONENTS)
        w = rc.weights
        expected = w["quality"] * out["quality"] - w["repetition"] * out["repetition"] - w["overlap"] * out["overlap"]
        torch.testing.assert_close(out["total"], expected)

    def test_quality_is_the_judges_log_probability_not_the_generators(self):
        rc = make_computer()
        history, lengths, prompts = batch([ids("The cat sat on the")] * 2, [2, 2])
        out = rc.compute(history, lengths, prompts, torch.tensor(ids(" mat") + ids(" banana")), torch.tensor([0, 1]))
        self.assertGreater(float(out["quality"][0]), float(out["quality"][1]))  # the judge saw "on the mat"
        lp = rc.judge.logprob_next(history, lengths, torch.tensor(ids(" mat") + ids(" banana")))
        torch.testing.assert_close(out["quality"], lp.clamp_min(-rc.clip) / rc.clip)
        self.assertTrue(((out["quality"] >= -1) & (out["quality"] <= 0)).all())

    def test_repetition_counts_repeated_trigrams_and_content_words_not_function_words(self):
        rc = make_computer()
        text = ids("The cat sat on the mat and the cat sat")
        history, lengths, prompts = batch([text, ids("The red ball"), ids("Then the")], [1, 1, 1])
        token = torch.tensor(ids(" on") + ids(" ball") + ids(" the"))
        rep = rc.compute(history, lengths, prompts, token, torch.tensor([0, 1, 2]))["repetition"]
        self.assertEqual(rep.tolist(), [1.0, 0.5, 0.0])  # "cat sat on" again; "ball" again; "the" is fine

    def test_overlap_only_counts_bigrams_of_other_samples_of_the_same_prompt(self):
        rc = make_computer()
        prompt = ids("Once upon")
        rows = [prompt + ids(" a time there"), prompt + ids(" a"), prompt + ids(" a"), prompt + ids(" a")]
        history, lengths, prompts = batch(rows, [len(prompt)] * 4)
        token = torch.tensor(ids(" time") * 4)
        # rows 0,1 share a prompt group; rows 2,3 another. Row 1's " a time" is in row 0's generation; row 0's own
        # earlier bigram does not count; rows 2 and 3 see only each other, whose generations lack " a time".
        out = rc.compute(history, lengths, prompts, token, torch.tensor([0, 0, 1, 1]))
        self.assertEqual(out["overlap"].tolist(), [0.0, 1.0, 0.0, 0.0])
        self.assertEqual(rc.cost(out).tolist(), out["overlap"].tolist())

    def test_every_component_equals_a_row_by_row_reading_of_its_definition(self):
        # random rows over a few tokens (so n-grams, content words and sibling bigrams repeat), every length from one
        # token up, prompts of several lengths, groups of four, against plain Python per row
        rc = make_computer(RL_REPETITION_WINDOW=5, RL_REPETITION_NGRAM=3)
        g = torch.Generator().manual_seed(0)
        vocab = torch.tensor(ids(" cat ball the and"))
        B, H = 32, 24
        lengths = torch.randint(1, H, (B,), generator=g)
        prompt_lengths = torch.minimum(torch.randint(1, 6, (B,), generator=g), lengths)
        history = torch.full((B, H), -1, dtype=torch.long)
        for b in range(B):
            history[b, :lengths[b]] = vocab[torch.randint(len(vocab), (int(lengths[b]),), generator=g)]
        token = vocab[torch.randint(len(vocab), (B,), generator=g)]
        group = torch.arange(B) // 4
        out = rc.compute(history, lengths, prompt_lengths, token, group)
        rows = [history[b, :lengths[b]].tolist() for b in range(B)]
        n = rc.ngram
        for b, (row, t) in enumerate(zip(rows, token.tolist(), strict=True)):
            new = tuple(row[len(row) - n + 1:] + [t])
            repeated = len(row) >= n - 1 and any(tuple(row[i - n + 1:i + 1]) == new for i in range(n - 1, len(row)))
            content = bool(rc.content_tokens[t]) and t in row[max(0, len(row) - rc.window):]
            overlap = any((row[-1], t) in {(other[i - 1], other[i]) for i in range(int(prompt_lengths[j]), len(other))}
                          for j, other in enumerate(rows) if j != b and group[j] == group[b])
            with self.subTest(row=b):
                self.assertEqual(out["repetition"][b].item(), 1.0 if repeated else 0.5 if content else 0.0)
                self.assertEqual(out["overlap"][b].item(), float(overlap))
        self.assertEqual({out["repetition"][b].item() for b in range(B)}, {0.0, 0.5, 1.0})  # every case occurs
        self.assertEqual({out["overlap"][b].item() for b in range(B)}, {0.0, 1.0})

    def test_lagrangian_mode_moves_overlap_from_the_total_to_the_cost(self):
        rc = make_computer()
        rc.set_lagrangian_mode()
        self.assertEqual(rc.weights["overlap"], 0.0)


class TestContentTokens(unittest.TestCase):
    def test_words_are_content_function_words_and_punctuation_are_not(self):
        mask = content_token_mask(TOK, V)
        for word in (" ball", " Lily", " happy"):
            self.assertTrue(mask[ids(word)[0]], word)
        for word in (" the", ".", ",", " a", " she"):
            self.assertFalse(mask[ids(word)[0]], word)


if __name__ == "__main__":
    unittest.main()
