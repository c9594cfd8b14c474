"""Tests for StudyData: prompt sets cut from different stories the generator never trained on, never reused.

A tiny built-in corpus (50 stories) and temporary cache directories keep the module fast.
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
import time
import unittest
from pathlib import Path

from core.errors import TidalError
from core.testing import slow
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataPipeline import EOT_TOKEN_ID, TinyTales, encode_prompt, load_stories
from plugins.tidal.StudyData import PromptSet, build_prompt_sets
from plugins.tidal.Utils import CONFIG_DIR, load_config

SIZES = {"train": 120, "dev": 40, "test": 60}


def tiny_config(cache_dir: str, **overrides) -> LMConfig:
    """The quickstart config on a 50-story built-in corpus, caching under `cache_dir` (shared by the study tests)."""
    config = load_config(CONFIG_DIR / "quickstart_config.yaml")
    return config.replace(**{"BUILTIN_NUM_STORIES": 50, "MAX_STORIES": None, "DATA_CACHE_DIR": cache_dir,
                             "NUM_CPU_CORE_WORKERS": 1, **overrides})


def text_source_config(cache_dir: str, count: int, **overrides) -> LMConfig:
    """A tiny config whose DATASET is a .txt file of `count` stories (one paragraph each), a source without the
    built-in generator's unlimited supply."""
    path = Path(cache_dir) / "stories.txt"
    path.write_text("\n\n".join(s.replace("\n", " ") for s in TinyTales(7).stories(0, count)), encoding="utf-8")
    return tiny_config(cache_dir, DATASET=str(path), **overrides)


class TinyConfigCase(unittest.TestCase):
    """A fresh temporary cache directory and a tiny config on it for every test (shared by the study tests)."""
    BUILTIN_NUM_STORIES = 50

    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.config = tiny_config(self.tmp, BUILTIN_NUM_STORIES=self.BUILTIN_NUM_STORIES)


def related(a: list[int], b: list[int]) -> bool:
    """Whether one token list is a prefix of (or equal to) the other."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


class PromptSetsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        cls.config = tiny_config(cls.tmp)
        cls.sets = build_prompt_sets(cls.config, SIZES, min_len=16, max_len=32, continuation_len=40, seed=0)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_sets_have_the_requested_sizes_and_lengths(self):
        self.assertEqual(set(self.sets), set(SIZES))
        for name, prompt_set in self.sets.items():
            self.assertIsInstance(prompt_set, PromptSet)
            self.assertEqual(prompt_set.name, name)
            self.assertEqual(len(prompt_set.prompts), SIZES[name])
            self.assertEqual(len(prompt_set.continuations), SIZES[name])
            self.assertEqual(len(prompt_set.story_ids), SIZES[name])
            self.assertTrue(all(16 <= len(p) <= 32 for p in prompt_set.prompts))
            self.assertTrue(all(1 <= len(c) <= 40 for c in prompt_set.continuations))

    def test_each_story_feeds_at_most_one_prompt(self):
        ids = [i for s in self.sets.values() for i in s.story_ids]
        self.assertEqual(len(ids), len(set(ids)))

    def test_builtin_prompts_come_from_stories_beyond_the_lm_corpus(self):
        ids = [i for s in self.sets.values() for i in s.story_ids]
        self.assertGreaterEqual(min(ids), self.config["BUILTIN_NUM_STORIES"])

    def test_no_prompt_is_identical_or_prefix_related_across_sets(self):
        prompts = [p for s in self.sets.values() for p in s.prompts]
        self.assertEqual(len({tuple(p) for p in prompts}), len(prompts))
        for a, b in itertools.combinations(self.sets, 2):
            for p in self.sets[a].prompts:
                for q in self.sets[b].prompts:
                    self.assertFalse(related(p, q), f"a {a} prompt and a {b} prompt are prefix-related")

    def test_prompts_and_continuations_are_the_true_story_tokens(self):
        tales = TinyTales(int(self.config["SEED"]))
        for prompt_set in self.sets.values():
            for prompt, continuation, story_id in zip(prompt_set.prompts, prompt_set.continuations,
                                                      prompt_set.story_ids, strict=True):
                story = encode_prompt(tales.story(story_id)) + [EOT_TOKEN_ID]
                self.assertEqual(prompt, story[:len(prompt)])
                self.assertEqual(continuation, story[len(prompt):len(prompt) + 40])

    def test_same_seed_same_sets_other_seed_other_sets(self):
        again = build_prompt_sets(self.config, SIZES, min_len=16, max_len=32, continuation_len=40, seed=0)
        other = build_prompt_sets(self.config, SIZES, min_len=16, max_len=32, continuation_len=40, seed=1)
        self.assertEqual(again, self.sets)
        self.assertNotEqual(other["test"].prompts, self.sets["test"].prompts)


class SourcesTest(TinyConfigCase):
    def _text_source(self, count: int) -> LMConfig:
        return text_source_config(self.tmp, count, VALIDATION_SPLIT_RATIO=0.5)

    def test_other_sources_use_only_the_validation_split(self):
        config = self._text_source(200)
        sets = build_prompt_sets(config, {"dev": 10, "test": 10}, min_len=16, max_len=32, continuation_len=8, seed=0)
        validation = [encode_prompt(s) for s in load_stories(config, "validation")]
        for prompt_set in sets.values():
            for prompt, story_id in zip(prompt_set.prompts, prompt_set.story_ids, strict=True):
                self.assertEqual(prompt, validation[story_id][:len(prompt)])

    def test_too_few_stories_is_a_one_line_error_not_a_cycle(self):
        config = self._text_source(20)  # 10 validation stories
        with self.assertRaises(TidalError) as raised:
            build_prompt_sets(config, {"train": 8, "test": 8}, min_len=16, max_len=32, continuation_len=8, seed=0)
        message = str(raised.exception)
        self.assertNotIn("\n", message)
        self.assertIn("16", message)  # how many were needed

    @slow
    def test_prompt_lengths_too_short_to_be_distinct_is_an_error(self):
        # every tinytales story starts with one of a few openings, so 2-token prompts collide almost at once
        with self.assertRaises(TidalError):
            build_prompt_sets(self.config, {"train": 200, "test": 200}, min_len=2, max_len=2,
                              continuation_len=8, seed=0)

    def test_arguments_are_checked(self):
        with self.assertRaises(ValueError):
            build_prompt_sets(self.config, {"test": 4}, min_len=8, max_len=4, continuation_len=8, seed=0)
        with self.assertRaises(ValueError):
            build_prompt_sets(self.config, {"test": 0}, min_len=4, max_len=8, continuation_len=8, seed=0)

    @slow
    def test_demo_and_base_sizes_build_in_seconds(self):
        start = time.perf_counter()
        sets = build_prompt_sets(self.config, {"train": 1000, "dev": 256, "test": 512}, min_len=16, max_len=32,
                                 continuation_len=48, seed=0)
        self.assertLess(time.perf_counter() - start, 10.0)
        self.assertEqual(len(sets["test"].prompts), 512)


if __name__ == "__main__":
    unittest.main()
