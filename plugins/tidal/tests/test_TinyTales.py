"""Tests for TinyTales, the `builtin:tinytales` generator: determinism, random access, variety, length, well-formed
text, and that the configured evaluation prompts occur in it."""
from __future__ import annotations

import random
import re
import unittest

from plugins.tidal.TinyTales import _BOYS, _GIRLS, _PET_NAMES, _PLACES, TinyTales
from plugins.tidal.Tokenizer import get_tokenizer
from plugins.tidal.Utils import BASE_CONFIG_PATH, read_yaml

_ARTICLE_ERRORS = re.compile(r"\b[Aa] [aeio]\w|\b[Aa]n [b-df-hj-np-tv-z]\w")


class TinyTalesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tales = TinyTales(seed=42)
        cls.sample = cls.tales.stories(0, 500)

    def test_same_seed_same_stories_different_seed_different(self):
        self.assertEqual(TinyTales(42).stories(0, 20), self.sample[:20])
        other = TinyTales(7).stories(0, 20)
        # strict=False: `other` is the first 20 stories, compared with the first 20 of the 500-story sample
        self.assertGreaterEqual(sum(a != b for a, b in zip(other, self.sample, strict=False)), 18)

    def test_story_is_random_access(self):
        # story(i) must not depend on which stories were generated before it (splits and caps rely on it)
        fresh = TinyTales(42)
        self.assertEqual(fresh.story(321), self.sample[321])
        self.assertEqual(fresh.stories(320, 3), self.sample[320:323])

    def test_stories_are_distinct_and_varied(self):
        self.assertGreaterEqual(len(set(self.sample)), 0.95 * len(self.sample))
        text = "\n".join(self.sample)
        names = {n for n in _GIRLS + _BOYS + _PET_NAMES if re.search(rf"\b{n}\b", text)}
        places = {p for p in _PLACES if f"the {p}" in text}
        self.assertGreaterEqual(len(names), 40)
        self.assertGreaterEqual(len(places), 8)

    def test_stories_are_not_near_duplicates(self):
        def trigrams(s):
            words = s.split()
            return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}

        rng = random.Random(0)
        grams = [trigrams(s) for s in self.sample]
        sims = []
        for _ in range(300):
            a, b = rng.sample(range(len(grams)), 2)
            sims.append(len(grams[a] & grams[b]) / len(grams[a] | grams[b]))
        self.assertLess(sum(sims) / len(sims), 0.25)
        self.assertLess(max(sims), 0.8)

    def test_story_length_in_words_and_token_budget(self):
        words = [len(s.split()) for s in self.sample]
        self.assertGreaterEqual(min(words), 100)
        self.assertLessEqual(max(words), 250)
        # 20,000 stories must give at least ~2 M tokens; estimated from a sample spread over the range
        spread = [self.tales.story(i) for i in range(0, 20000, 40)]
        tokens = get_tokenizer().encode_ordinary_batch(spread, num_threads=2)
        mean = sum(len(t) + 1 for t in tokens) / len(tokens)
        self.assertGreaterEqual(mean * 20000, 2_000_000)

    def test_evaluation_prompts_are_in_distribution(self):
        stories = self.sample + self.tales.stories(500, 1500)
        for prompt in read_yaml(BASE_CONFIG_PATH)["EVAL_PROMPTS"]:
            self.assertTrue(any(s.startswith(prompt) for s in stories), prompt)

    def test_stories_are_well_formed_text(self):
        for story in self.sample:
            self.assertNotRegex(story, r"[{}]|\s{2}|\n\s*\n|<\|", story)
            self.assertNotRegex(story, _ARTICLE_ERRORS, story)
            self.assertEqual(story.count('"') % 2, 0, story)
            self.assertRegex(story, r'[.!?]"?$', story)
            for sentence in re.split(r"(?<=[.!?])\s+", story):  # `"Oh no?" she said` is one sentence
                self.assertRegex(sentence, r'^"?[A-Z]', sentence)

    def test_most_stories_contain_dialogue(self):
        self.assertGreaterEqual(sum('"' in s for s in self.sample), 0.8 * len(self.sample))


if __name__ == "__main__":
    unittest.main()
