"""Tests for DataPipeline's TokenDataset: the token stream, shifted chunks, batches, the read-only memmap, pickling
and every local format feeding the same stream.

The other data modules have their own test files: test_Tokenizer, test_TinyTales, test_DataSources, test_TokenCache.
"""
from __future__ import annotations

import json
import pickle
import unittest

import numpy as np
import torch

from core.errors import TidalError
from plugins.tidal import DataPipeline as dp
from plugins.tidal.tests.test_DataSources import CONTEXT, STORIES, make_config
from plugins.tidal.tests.test_TokenCache import expected_stream
from plugins.tidal.tests.test_Tokenizer import TempDirTestCase


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


if __name__ == "__main__":
    unittest.main()
