"""Tests for DataSources: load_stories over every source (built-in corpus, .txt, .jsonl, .parquet, saved and hub
`datasets`), the ratio split and MAX_STORIES, and the errors for sources that cannot be read.

Tiny configs (200 built-in stories, 32-token context) keep the module fast; make_config and STORIES are shared with
the token cache and dataset tests.
"""
from __future__ import annotations

import json
import unittest
from unittest import mock

from core.errors import TidalError
from plugins.tidal import DataSources as src
from plugins.tidal.tests.test_Tokenizer import NoNetwork, TempDirTestCase
from plugins.tidal.TinyTales import TinyTales
from plugins.tidal.Utils import BASE_CONFIG_PATH, read_yaml

CONTEXT = 32


def make_config(**overrides) -> dict:
    config = read_yaml(BASE_CONFIG_PATH)
    config.update(DATASET="builtin:tinytales", BUILTIN_NUM_STORIES=200, MAX_STORIES=None,
                  VALIDATION_SPLIT_RATIO=0.1, MAX_CONTEXT_LENGTH=CONTEXT, SEED=42)
    config.update(overrides)
    return config


STORIES = [f"Story number {i}. A cat named Tom found a ball in the park." for i in range(30)]


class LoadStoriesTest(TempDirTestCase):
    def setUp(self):
        super().setUp()
        import datasets

        datasets.disable_progress_bars()  # keeps the test log readable
        self.addCleanup(datasets.enable_progress_bars)

    def test_builtin_splits_are_disjoint_and_sized_by_ratio(self):
        config = make_config()
        train = src.load_stories(config, "train")
        validation = src.load_stories(config, "validation")
        self.assertEqual((len(train), len(validation)), (180, 20))
        self.assertFalse(set(train) & set(validation))
        self.assertEqual(src.load_stories(config, "validation"), validation)
        self.assertEqual(set(train) | set(validation), set(TinyTales(42).stories(0, 200)))

    def test_max_stories_caps_each_split(self):
        config = make_config(MAX_STORIES=5)
        self.assertEqual(len(src.load_stories(config, "train")), 5)
        self.assertEqual(len(src.load_stories(config, "validation")), 5)

    def test_unknown_split_is_rejected(self):
        with self.assertRaises(ValueError):
            src.load_stories(make_config(), "test")

    def _both_splits(self, dataset) -> tuple[list[str], list[str]]:
        config = make_config(DATASET=str(dataset))
        return src.load_stories(config, "train"), src.load_stories(config, "validation")

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
            src.load_stories(make_config(DATASET=str(path)), "train")

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
        a = src.load_stories(make_config(DATASET=str(path), SEED=1), "validation")
        b = src.load_stories(make_config(DATASET=str(path), SEED=2), "validation")
        self.assertEqual(a, src.load_stories(make_config(DATASET=str(path), SEED=1), "validation"))
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
                src.load_stories(make_config(DATASET="tidal-tests/no-such-dataset"), "train")

    def test_missing_local_file_and_unsupported_type_are_clear_errors(self):
        with self.assertRaisesRegex(TidalError, "not found"):
            src.load_stories(make_config(DATASET=str(self.tmp / "absent.jsonl")), "train")
        csv = self.tmp / "stories.csv"
        csv.write_text("text\nhello\n")
        with self.assertRaisesRegex(TidalError, "unsupported"):
            src.load_stories(make_config(DATASET=str(csv)), "train")


if __name__ == "__main__":
    unittest.main()
