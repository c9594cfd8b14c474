"""Tests for DataPipeline: tokenizer, built-in corpus, story sources, token cache, dataset, prompt starts.

Tiny configs (200 built-in stories, 32-token context) and temporary cache directories keep the module fast.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import re
import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from plugins.tidal import DataPipeline as dp
from plugins.tidal.Utils import BASE_CONFIG_PATH, TidalError, read_yaml

ASSET = Path(dp.__file__).resolve().parent / "assets" / "gpt2.tiktoken"
CONTEXT = 32


def make_config(**overrides) -> dict:
    config = read_yaml(BASE_CONFIG_PATH)
    config.update(DATASET="builtin:tinytales", BUILTIN_NUM_STORIES=200, MAX_STORIES=None,
                  VALIDATION_SPLIT_RATIO=0.1, MAX_CONTEXT_LENGTH=CONTEXT, SEED=42)
    config.update(overrides)
    return config


def expected_stream(stories: list[str]) -> list[int]:
    enc = dp.get_tokenizer()
    out: list[int] = []
    for story in stories:
        out += enc.encode_ordinary(story) + [dp.EOT_TOKEN_ID]
    return out


class TempDirTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.cache_dir = self.tmp / "cache"


def _network_disabled(*args, **kwargs):
    raise OSError("network access attempted in a test")


class NoNetwork:
    """Patch the socket layer so any connection attempt (DNS included) fails at once."""

    def __enter__(self):
        self._patches = [mock.patch.object(socket.socket, "connect", _network_disabled),
                         mock.patch.object(socket, "getaddrinfo", _network_disabled),
                         mock.patch.object(socket, "create_connection", _network_disabled)]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in reversed(self._patches):
            p.stop()


# ---------------------------------------------------------------------------------------------- tokenizer
class TokenizerTest(TempDirTestCase):
    def test_known_gpt2_ids_and_vocab(self):
        enc = dp.get_tokenizer()
        self.assertEqual(enc.encode("Once upon a time"), [7454, 2402, 257, 640])
        self.assertEqual(enc.encode("Hello world"), [15496, 995])
        self.assertEqual(enc.encode("<|endoftext|>", allowed_special="all"), [dp.EOT_TOKEN_ID])
        self.assertEqual(dp.EOT_TOKEN_ID, 50256)
        self.assertEqual(enc.n_vocab, dp.VOCAB_SIZE)
        self.assertEqual(dp.VOCAB_SIZE, 50257)

    def test_tokenizer_is_cached_per_process(self):
        self.assertIs(dp.get_tokenizer(), dp.get_tokenizer())

    def test_prompt_helpers_round_trip_and_never_emit_eot_from_text(self):
        text = "Mom said to Lily, \"Let's go!\""
        self.assertEqual(dp.decode(dp.encode_prompt(text)), text)
        self.assertNotIn(dp.EOT_TOKEN_ID, dp.encode_prompt("the end <|endoftext|> again"))

    def test_loads_with_networking_disabled(self):
        copy = self.tmp / "gpt2.tiktoken"
        shutil.copyfile(ASSET, copy)
        with NoNetwork():
            enc = dp.get_tokenizer(copy)
            self.assertEqual(enc.encode("Once upon a time"), [7454, 2402, 257, 640])

    def test_corrupted_asset_raises_clear_error(self):
        copy = self.tmp / "gpt2.tiktoken"
        data = bytearray(ASSET.read_bytes())
        data[10] ^= 0x01
        copy.write_bytes(bytes(data))
        with self.assertRaisesRegex(TidalError, "sha256"):
            dp.get_tokenizer(copy)

    def test_missing_asset_raises_clear_error(self):
        with self.assertRaisesRegex(TidalError, "not found"):
            dp.get_tokenizer(self.tmp / "absent.tiktoken")


# ---------------------------------------------------------------------------------------------- built-in corpus
_ARTICLE_ERRORS = re.compile(r"\b[Aa] [aeio]\w|\b[Aa]n [b-df-hj-np-tv-z]\w")


class TinyTalesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tales = dp.TinyTales(seed=42)
        cls.sample = cls.tales.stories(0, 500)

    def test_same_seed_same_stories_different_seed_different(self):
        self.assertEqual(dp.TinyTales(42).stories(0, 20), self.sample[:20])
        other = dp.TinyTales(7).stories(0, 20)
        self.assertGreaterEqual(sum(a != b for a, b in zip(other, self.sample)), 18)

    def test_story_is_random_access(self):
        # story(i) must not depend on which stories were generated before it (splits and caps rely on it)
        fresh = dp.TinyTales(42)
        self.assertEqual(fresh.story(321), self.sample[321])
        self.assertEqual(fresh.stories(320, 3), self.sample[320:323])

    def test_stories_are_distinct_and_varied(self):
        self.assertGreaterEqual(len(set(self.sample)), 0.95 * len(self.sample))
        text = "\n".join(self.sample)
        names = {n for n in dp.TinyTales.NAMES if re.search(rf"\b{n}\b", text)}
        places = {p for p in dp.TinyTales.PLACES if f"the {p}" in text}
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
        tokens = dp.get_tokenizer().encode_ordinary_batch(spread, num_threads=2)
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


# ---------------------------------------------------------------------------------------------- story sources
STORIES = [f"Story number {i}. A cat named Tom found a ball in the park." for i in range(30)]


class LoadStoriesTest(TempDirTestCase):
    def setUp(self):
        super().setUp()
        import datasets

        datasets.disable_progress_bars()  # keeps the test log readable
        self.addCleanup(datasets.enable_progress_bars)

    def test_builtin_splits_are_disjoint_and_sized_by_ratio(self):
        config = make_config()
        train = dp.load_stories(config, "train")
        validation = dp.load_stories(config, "validation")
        self.assertEqual((len(train), len(validation)), (180, 20))
        self.assertFalse(set(train) & set(validation))
        self.assertEqual(dp.load_stories(config, "validation"), validation)
        self.assertEqual(set(train) | set(validation), set(dp.TinyTales(42).stories(0, 200)))

    def test_max_stories_caps_each_split(self):
        config = make_config(MAX_STORIES=5)
        self.assertEqual(len(dp.load_stories(config, "train")), 5)
        self.assertEqual(len(dp.load_stories(config, "validation")), 5)

    def test_unknown_split_is_rejected(self):
        with self.assertRaises(ValueError):
            dp.load_stories(make_config(), "test")

    def _both_splits(self, dataset) -> tuple[list[str], list[str]]:
        config = make_config(DATASET=str(dataset))
        return dp.load_stories(config, "train"), dp.load_stories(config, "validation")

    def assert_ratio_split_of(self, stories, train, validation):
        self.assertEqual(len(validation), 3)
        self.assertEqual(sorted(train + validation), sorted(stories))

    def test_txt_separated_by_blank_lines(self):
        path = self.tmp / "stories.txt"
        path.write_text("\n\n\n".join(STORIES) + "\n", encoding="utf-8")
        self.assert_ratio_split_of(STORIES, *self._both_splits(path))

    def test_txt_separated_by_endoftext(self):
        stories = [s.replace(". ", ".\n\n") for s in STORIES]  # blank lines inside stories stay inside
        path = self.tmp / "stories.txt"
        path.write_text("<|endoftext|>\n".join(stories), encoding="utf-8")
        self.assert_ratio_split_of(stories, *self._both_splits(path))

    def test_jsonl_text_field(self):
        path = self.tmp / "stories.jsonl"
        path.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(STORIES)))
        self.assert_ratio_split_of(STORIES, *self._both_splits(path))

    def test_jsonl_without_text_field_is_a_clear_error(self):
        path = self.tmp / "bad.jsonl"
        path.write_text(json.dumps({"story": "x"}) + "\n")
        with self.assertRaisesRegex(TidalError, "text"):
            dp.load_stories(make_config(DATASET=str(path)), "train")

    def test_parquet_text_column(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.tmp / "stories.parquet"
        pq.write_table(pa.table({"text": STORIES}), path)
        self.assert_ratio_split_of(STORIES, *self._both_splits(path))

    def test_saved_dataset_dict_uses_its_own_splits(self):
        import datasets

        path = self.tmp / "saved_dict"
        datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": STORIES[:25]}),
                              "validation": datasets.Dataset.from_dict({"text": STORIES[25:]})}
                             ).save_to_disk(str(path))
        train, validation = self._both_splits(path)
        self.assertEqual((train, validation), (STORIES[:25], STORIES[25:]))

    def test_saved_single_dataset_is_split_by_ratio(self):
        import datasets

        path = self.tmp / "saved_one"
        datasets.Dataset.from_dict({"text": STORIES}).save_to_disk(str(path))
        self.assert_ratio_split_of(STORIES, *self._both_splits(path))

    def test_ratio_split_depends_on_seed(self):
        path = self.tmp / "stories.jsonl"
        path.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
        a = dp.load_stories(make_config(DATASET=str(path), SEED=1), "validation")
        b = dp.load_stories(make_config(DATASET=str(path), SEED=2), "validation")
        self.assertEqual(a, dp.load_stories(make_config(DATASET=str(path), SEED=1), "validation"))
        self.assertNotEqual(a, b)

    def test_other_names_go_through_datasets_load_dataset(self):
        import datasets
        import datasets.config

        # a directory of raw data files is not a save_to_disk directory, so it takes the load_dataset path
        source = self.tmp / "hub_like"
        source.mkdir()
        (source / "train.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES[:25]))
        (source / "validation.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES[25:]))
        with NoNetwork(), \
                mock.patch.object(datasets.config, "HF_DATASETS_CACHE", str(self.tmp / "hf")), \
                mock.patch.object(datasets, "load_dataset", wraps=datasets.load_dataset) as load:
            train, validation = self._both_splits(source)
        self.assertEqual(load.call_args.args[0], str(source))
        self.assertEqual((train, validation), (STORIES[:25], STORIES[25:]))

    def test_unavailable_hub_dataset_is_a_clear_error(self):
        import datasets.config
        import huggingface_hub.constants

        with NoNetwork(), \
                mock.patch.object(datasets.config, "HF_DATASETS_CACHE", str(self.tmp / "hf")), \
                mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True), \
                mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
            with self.assertRaisesRegex(TidalError, "not available offline.*builtin:tinytales"):
                dp.load_stories(make_config(DATASET="tidal-tests/no-such-dataset"), "train")

    def test_missing_local_file_and_unsupported_type_are_clear_errors(self):
        with self.assertRaisesRegex(TidalError, "not found"):
            dp.load_stories(make_config(DATASET=str(self.tmp / "absent.jsonl")), "train")
        csv = self.tmp / "stories.csv"
        csv.write_text("text\nhello\n")
        with self.assertRaisesRegex(TidalError, "unsupported"):
            dp.load_stories(make_config(DATASET=str(csv)), "train")


# ---------------------------------------------------------------------------------------------- TokenDataset
class TokenDatasetTest(TempDirTestCase):
    def dataset(self, split="train", progress=False, **overrides) -> dp.TokenDataset:
        return dp.TokenDataset(make_config(**overrides), split, cache_dir=self.cache_dir, progress=progress)

    def test_stream_has_eot_after_every_story(self):
        ds = self.dataset("validation")
        stories = dp.load_stories(make_config(), "validation")
        self.assertEqual(ds.tokens.tolist(), expected_stream(stories))
        self.assertEqual(int((ds.tokens == dp.EOT_TOKEN_ID).sum()), len(stories))
        self.assertEqual(ds.num_tokens, len(ds.tokens))

    def test_items_are_shifted_non_overlapping_int64_chunks(self):
        ds = self.dataset()
        self.assertEqual(ds.context_length, CONTEXT)
        self.assertEqual(len(ds), ds.num_tokens // (CONTEXT + 1))
        for i in (0, 1, len(ds) - 1):
            x, y = ds[i]
            self.assertEqual((x.dtype, y.dtype), (torch.int64, torch.int64))
            self.assertEqual((x.shape, y.shape), ((CONTEXT,), (CONTEXT,)))
            self.assertTrue(torch.equal(x[1:], y[:-1]))
            start = i * (CONTEXT + 1)
            self.assertEqual(x.tolist(), ds.tokens[start:start + CONTEXT].tolist())
            self.assertEqual(y[-1].item(), int(ds.tokens[start + CONTEXT]))
        self.assertEqual(ds[-1][0].tolist(), ds[len(ds) - 1][0].tolist())
        with self.assertRaises(IndexError):
            ds[len(ds)]

    def test_batch_equals_stacked_items(self):
        ds = self.dataset()
        indices = [3, 0, len(ds) - 1, 3]
        x, y = ds.batch(indices)
        self.assertEqual((x.shape, x.dtype, y.dtype), ((4, CONTEXT), torch.int64, torch.int64))
        self.assertTrue(torch.equal(x, torch.stack([ds[i][0] for i in indices])))
        self.assertTrue(torch.equal(y, torch.stack([ds[i][1] for i in indices])))
        self.assertEqual(ds.batch(range(2))[0].shape, (2, CONTEXT))
        with self.assertRaises(IndexError):
            ds.batch([len(ds)])

    def test_tokens_are_a_read_only_memmap(self):
        ds = self.dataset()
        self.assertIsInstance(ds.tokens, np.memmap)
        self.assertEqual(ds.tokens.dtype, np.uint16)
        self.assertFalse(ds.tokens.flags.writeable)

    def test_pickling_sends_the_path_not_the_tokens(self):
        ds = self.dataset()
        blob = pickle.dumps(ds)
        self.assertLess(len(blob), 4096)
        clone = pickle.loads(blob)
        self.assertIsInstance(clone.tokens, np.memmap)
        self.assertTrue(torch.equal(clone[3][0], ds[3][0]))

    def test_all_local_formats_feed_the_same_pipeline(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        txt = self.tmp / "s.txt"
        txt.write_text("\n\n".join(STORIES), encoding="utf-8")
        jsonl = self.tmp / "s.jsonl"
        jsonl.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
        parquet = self.tmp / "s.parquet"
        pq.write_table(pa.table({"text": STORIES}), parquet)
        streams = [self.dataset(DATASET=str(p)).tokens.tolist() for p in (txt, jsonl, parquet)]
        train = dp.load_stories(make_config(DATASET=str(txt)), "train")
        self.assertEqual(streams, [expected_stream(train)] * 3)

    def test_split_too_small_for_one_chunk_is_a_clear_error(self):
        with self.assertRaisesRegex(TidalError, "MAX_CONTEXT_LENGTH"):
            self.dataset("validation", MAX_STORIES=1, MAX_CONTEXT_LENGTH=4096)


class TokenCacheTest(TempDirTestCase):
    def build(self, config=None, progress=False) -> dp.TokenDataset:
        return dp.TokenDataset(config or make_config(), "train", cache_dir=self.cache_dir, progress=progress)

    def sidecar(self, ds) -> Path:
        return Path(ds.cache_path).with_suffix(".json")

    def assert_rebuilt(self, before: os.stat_result, ds: dp.TokenDataset):
        after = os.stat(ds.cache_path)
        self.assertNotEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))

    def test_cache_is_uint16_on_disk_with_a_sidecar(self):
        ds = self.build()
        self.assertEqual(Path(ds.cache_path).parent, self.cache_dir)
        self.assertEqual(os.path.getsize(ds.cache_path), 2 * ds.num_tokens)
        self.assertEqual(np.fromfile(ds.cache_path, dtype="<u2").tolist(), ds.tokens.tolist())
        meta = json.loads(self.sidecar(ds).read_text())
        self.assertEqual(meta["dtype"], "uint16")
        self.assertEqual(meta["num_tokens"], ds.num_tokens)
        self.assertEqual(meta["key"]["tokenizer_sha256"], dp.TOKENIZER_SHA256)

    def test_build_shows_progress_and_leaves_no_temp_files(self):
        with mock.patch("sys.stderr", new_callable=io.StringIO) as stderr:
            ds = self.build(progress=True)
        self.assertIn("story/s", stderr.getvalue())
        names = sorted(p.name for p in self.cache_dir.iterdir())
        stem = Path(ds.cache_path).stem
        self.assertEqual(names, [f"{stem}.json", f"{stem}.u16"])

    def test_second_construction_reuses_the_cache(self):
        ds = self.build()
        before = os.stat(ds.cache_path)
        with mock.patch.object(dp, "load_stories", side_effect=AssertionError("cache was rebuilt")):
            again = self.build()
        after = os.stat(again.cache_path)
        self.assertEqual((before.st_ino, before.st_mtime_ns), (after.st_ino, after.st_mtime_ns))
        self.assertEqual(again.tokens.tolist(), ds.tokens.tolist())

    def test_context_length_is_a_view_not_part_of_the_key(self):
        short = self.build(make_config(MAX_CONTEXT_LENGTH=16))
        with mock.patch.object(dp, "load_stories", side_effect=AssertionError("cache was rebuilt")):
            long = self.build(make_config(MAX_CONTEXT_LENGTH=64))
        self.assertEqual(short.cache_path, long.cache_path)
        self.assertEqual((short.context_length, long.context_length), (16, 64))
        self.assertEqual(len(long), long.num_tokens // 65)

    def test_data_affecting_settings_change_the_key(self):
        paths = {self.build(make_config(**o)).cache_path for o in
                 ({}, {"SEED": 1}, {"BUILTIN_NUM_STORIES": 150}, {"MAX_STORIES": 50},
                  {"VALIDATION_SPLIT_RATIO": 0.2})}
        self.assertEqual(len(paths), 5)
        validation = dp.TokenDataset(make_config(), "validation", cache_dir=self.cache_dir, progress=False)
        self.assertNotIn(validation.cache_path, paths)

    def test_changed_local_file_gets_a_fresh_cache(self):
        path = self.tmp / "s.jsonl"
        path.write_text("".join(json.dumps({"text": s}) + "\n" for s in STORIES))
        first = self.build(make_config(DATASET=str(path)))
        path.write_text("".join(json.dumps({"text": s.upper()}) + "\n" for s in STORIES))
        second = self.build(make_config(DATASET=str(path)))
        self.assertNotEqual(first.cache_path, second.cache_path)
        train = dp.load_stories(make_config(DATASET=str(path)), "train")
        self.assertEqual(second.tokens.tolist(), expected_stream(train))

    def _tamper(self, ds, edit):
        meta = json.loads(self.sidecar(ds).read_text())
        edit(meta)
        self.sidecar(ds).write_text(json.dumps(meta))

    def test_stale_key_is_rebuilt(self):
        ds = self.build()
        before = os.stat(ds.cache_path)
        self._tamper(ds, lambda m: m["key"].update(tokenizer_sha256="0" * 64))
        with self.assertLogs(dp.log, "WARNING") as logs:
            again = self.build()
        self.assert_rebuilt(before, again)
        self.assertIn("key", logs.output[0])
        self.assertEqual(json.loads(self.sidecar(again).read_text())["key"]["tokenizer_sha256"],
                         dp.TOKENIZER_SHA256)

    def test_wrong_dtype_sidecar_is_rebuilt(self):
        ds = self.build()
        before = os.stat(ds.cache_path)
        self._tamper(ds, lambda m: m.update(dtype="int32"))
        with self.assertLogs(dp.log, "WARNING") as logs:
            again = self.build()
        self.assert_rebuilt(before, again)
        self.assertIn("int32", logs.output[0])
        self.assertEqual(again.tokens.dtype, np.uint16)

    def test_odd_sized_or_truncated_raw_file_is_rebuilt(self):
        ds = self.build()
        expected = ds.tokens.tolist()
        del ds
        for size in (101, 100):  # odd: not uint16; even but short: truncated
            with open(self.build().cache_path, "r+b") as f:
                f.truncate(size)
            with self.assertLogs(dp.log, "WARNING"):
                again = self.build()
            self.assertEqual(again.tokens.tolist(), expected)

    def test_missing_sidecar_means_unfinished_build(self):
        ds = self.build()
        self.sidecar(ds).unlink()
        with self.assertLogs(dp.log, "WARNING"):
            again = self.build()
        self.assertTrue(self.sidecar(again).exists())

    def test_unwritable_cache_dir_is_a_clear_error(self):
        blocker = self.tmp / "a_file"
        blocker.write_text("not a directory")
        with self.assertRaisesRegex(TidalError, "cache"):
            dp.TokenDataset(make_config(), "train", cache_dir=blocker / "cache", progress=False)

    def test_default_cache_dir_comes_from_config(self):
        config = make_config(DATA_CACHE_DIR=str(self.tmp / "from_config"))
        ds = dp.TokenDataset(config, "train", progress=False)
        self.assertEqual(Path(ds.cache_path).parent, self.tmp / "from_config")


if __name__ == "__main__":
    unittest.main()
