"""Tests for TokenCache, through the TokenDataset that builds it: the uint16 file and its sidecar, reuse, what is
and is not in the key, and rebuilding a stale, mistyped, truncated or unfinished cache.

"Not rebuilt" is checked by patching `DataPipeline.load_stories`, the name TokenDataset asks for the stories.
"""
from __future__ import annotations

import io
import json
import os
import unittest
from pathlib import Path
from unittest import mock

import numpy as np

from core.errors import TidalError
from plugins.tidal import DataPipeline as dp
from plugins.tidal import TokenCache as tc
from plugins.tidal.tests.test_DataSources import STORIES, make_config
from plugins.tidal.tests.test_Tokenizer import TempDirTestCase
from plugins.tidal.Tokenizer import EOT_TOKEN_ID, TOKENIZER_SHA256, get_tokenizer


def expected_stream(stories: list[str]) -> list[int]:
    enc = get_tokenizer()
    out: list[int] = []
    for story in stories:
        out += enc.encode_ordinary(story) + [EOT_TOKEN_ID]
    return out


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
        self.assertEqual(meta["key"]["tokenizer_sha256"], TOKENIZER_SHA256)

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
        with self.assertLogs(tc.log, "WARNING") as logs:
            again = self.build()
        self.assert_rebuilt(before, again)
        self.assertIn("key", logs.output[0])
        self.assertEqual(json.loads(self.sidecar(again).read_text())["key"]["tokenizer_sha256"],
                         TOKENIZER_SHA256)

    def test_wrong_dtype_sidecar_is_rebuilt(self):
        ds = self.build()
        before = os.stat(ds.cache_path)
        self._tamper(ds, lambda m: m.update(dtype="int32"))
        with self.assertLogs(tc.log, "WARNING") as logs:
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
            with self.assertLogs(tc.log, "WARNING"):
                again = self.build()
            self.assertEqual(again.tokens.tolist(), expected)

    def test_missing_sidecar_means_unfinished_build(self):
        ds = self.build()
        self.sidecar(ds).unlink()
        with self.assertLogs(tc.log, "WARNING"):
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
