"""experiment_utils: experiment ids, experiment directories and their metadata, device resolution."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import unittest
from datetime import datetime
from unittest import mock

import torch
import yaml

import experiment_utils as eu
from core.errors import TidalError
from core.paths import PROJECT_ROOT
from tests.support import TempDirTestCase

ID_PATTERN = re.compile(r"^\d{8}-\d{6}-commit_(?:[0-9a-f]{4,40}|nogit)-config_[0-9a-f]{10}$")
RL_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-commit_(?:[0-9a-f]{4,40}|nogit)-config_[0-9a-f]{10}-rl_[0-9a-f]{10}$")


class ExperimentUtilsTestCase(TempDirTestCase):
    """Each test gets its own EXPERIMENTS_DIR and no TIDAL_EXPERIMENT_ID from the surrounding environment."""

    def setUp(self) -> None:
        super().setUp()
        self.root = self.tmp / "experiments"
        env = {k: v for k, v in os.environ.items() if k != "TIDAL_EXPERIMENT_ID"}
        env["EXPERIMENTS_DIR"] = str(self.root)
        patcher = mock.patch.dict(os.environ, env, clear=True)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.config = self.tmp / "base_config.yaml"
        self.config.write_text("EMBED_DIM: 32\nBATCH_SIZE: 8\n")
        self.rl_config = self.tmp / "rl_config.yaml"
        self.rl_config.write_text("RL_NUM_ENVS: 4\n")


class TestExperimentsRoot(ExperimentUtilsTestCase):
    def test_experiments_dir_env_is_honoured(self):
        self.assertEqual(eu.experiments_root(), self.root.resolve())

    def test_default_root_is_experiments_in_the_project_root(self):
        with mock.patch.dict(os.environ, {}, clear=True):
            self.assertEqual(eu.experiments_root(), PROJECT_ROOT / "experiments")


class TestGitShortHash(ExperimentUtilsTestCase):
    def test_returns_nogit_outside_a_repository(self):
        outside = self.tmp / "not-a-repo"
        outside.mkdir()
        # GIT_CEILING_DIRECTORIES stops git from finding a repository above the temp dir.
        with mock.patch.dict(os.environ, {"GIT_CEILING_DIRECTORIES": str(self.tmp)}):
            self.assertEqual(eu.git_short_hash(cwd=outside), "nogit")

    def test_returns_nogit_when_git_is_not_installed(self):
        with mock.patch.dict(os.environ, {"PATH": str(self.tmp)}):
            self.assertEqual(eu.git_short_hash(cwd=self.tmp), "nogit")

    @unittest.skipUnless(shutil.which("git"), "git not installed")
    def test_returns_the_short_head_hash_in_a_repository(self):
        repo = self.tmp / "repo"
        repo.mkdir()
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        subprocess.run([*git, "init", "-q"], check=True)
        (repo / "f.txt").write_text("x")
        subprocess.run([*git, "add", "f.txt"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
        expected = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                                  text=True).stdout.strip()
        self.assertEqual(eu.git_short_hash(cwd=repo), expected)


class TestExperimentIds(ExperimentUtilsTestCase):
    def test_file_sha256_is_the_hash_of_the_file_bytes(self):
        self.assertEqual(eu.file_sha256(self.config), hashlib.sha256(self.config.read_bytes()).hexdigest())

    def test_lm_id_has_timestamp_commit_and_config_hash(self):
        now = datetime(2026, 3, 4, 5, 6, 7)
        exp_id = eu.make_experiment_id(self.config, now=now)
        self.assertRegex(exp_id, ID_PATTERN)
        self.assertTrue(exp_id.startswith("20260304-050607-commit_"))
        self.assertTrue(exp_id.endswith(f"-config_{eu.file_sha256(self.config)[:10]}"))

    def test_config_hash_is_deterministic_and_tracks_the_content(self):
        now = datetime(2026, 1, 1)
        first = eu.make_experiment_id(self.config, now=now)
        self.assertEqual(first, eu.make_experiment_id(self.config, now=now))
        self.config.write_text("EMBED_DIM: 64\nBATCH_SIZE: 8\n")
        self.assertNotEqual(first.rsplit("config_", 1)[1], eu.make_experiment_id(self.config, now=now)
                            .rsplit("config_", 1)[1])

    def test_rl_id_appends_the_rl_config_hash(self):
        exp_id = eu.make_experiment_id(self.config, self.rl_config, now=datetime(2026, 1, 1))
        self.assertRegex(exp_id, RL_ID_PATTERN)
        self.assertTrue(exp_id.endswith(f"-rl_{eu.file_sha256(self.rl_config)[:10]}"))

    def test_generated_ids_are_valid(self):
        self.assertTrue(eu.is_valid_experiment_id(eu.make_experiment_id(self.config, self.rl_config)))

    def test_id_validation_rejects_anything_that_could_escape_a_directory(self):
        for good in ("20260101-000000-commit_nogit-config_0123456789", "run_1", "a.b-c", "x" * 128):
            self.assertTrue(eu.is_valid_experiment_id(good), good)
        for bad in ("", ".", "..", ".hidden", "../x", "a/b", "a\\b", "/abs", "a b", "a:b", "x" * 129, "é",
                    "-flag", "_x", "a..b", "a\nb", None, 7):
            self.assertFalse(eu.is_valid_experiment_id(bad), repr(bad))


class TestCreateExperimentDir(ExperimentUtilsTestCase):
    LM_CONFIG = {"EMBED_DIM": 32, "LEARNING_RATE_SCHEDULER": {"BASE_LR": 0.001}}

    def test_lm_dir_has_metadata_and_effective_config(self):
        exp_dir = eu.create_experiment_dir("lm", self.config, {"config.yaml": self.LM_CONFIG})
        self.assertEqual(exp_dir.parent, self.root.resolve())
        self.assertRegex(exp_dir.name, ID_PATTERN)
        meta = json.loads((exp_dir / "metadata.json").read_text())
        self.assertEqual(meta["experiment_id"], exp_dir.name)
        self.assertEqual(meta["type"], "lm")
        self.assertIsInstance(meta["created_at"], float)
        self.assertAlmostEqual(meta["created_at"], datetime.now().timestamp(), delta=60)
        self.assertEqual(meta["config_sha256"], eu.file_sha256(self.config))
        self.assertEqual(meta["config_path"], str(self.config))
        self.assertIn("git_commit", meta)
        self.assertIsNone(meta["source_experiment"])
        self.assertIsNone(meta["source_checkpoint"])
        self.assertEqual(yaml.safe_load((exp_dir / "config.yaml").read_text()), self.LM_CONFIG)
        self.assertEqual(eu.read_experiment_metadata(exp_dir), meta)

    def test_the_generated_id_hashes_the_effective_config_so_overrides_change_it(self):
        # the same YAML file run with `--set BATCH_SIZE=16` is another experiment: its id must say so
        plain = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"EMBED_DIM": 32, "BATCH_SIZE": 8}})
        again = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"BATCH_SIZE": 8, "EMBED_DIM": 32}})
        override = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"EMBED_DIM": 32, "BATCH_SIZE": 16}})
        config_hash = lambda d: d.name.split("-config_")[1][:10]  # noqa: E731
        self.assertEqual(config_hash(plain), config_hash(again))       # key order does not matter
        self.assertNotEqual(config_hash(plain), config_hash(override))
        self.assertEqual(config_hash(plain), eu.config_digest({"EMBED_DIM": 32, "BATCH_SIZE": 8})[:10])
        rl = {"base_config.yaml": {"EMBED_DIM": 32}, "rl_config.yaml": {"RL_NUM_ENVS": 4}}
        rl_plain = eu.create_experiment_dir("rl", self.config, rl, rl_config_path=self.rl_config)
        rl_override = eu.create_experiment_dir("rl", self.config, {**rl, "rl_config.yaml": {"RL_NUM_ENVS": 8}},
                                               rl_config_path=self.rl_config)
        self.assertRegex(rl_override.name, RL_ID_PATTERN)
        self.assertEqual(rl_plain.name.split("-rl_")[0][-10:], rl_override.name.split("-rl_")[0][-10:])
        self.assertNotEqual(rl_plain.name.split("-rl_")[1][:10], rl_override.name.split("-rl_")[1][:10])
        self.assertEqual(eu.read_experiment_metadata(override)["config_digest"],
                         eu.config_digest({"EMBED_DIM": 32, "BATCH_SIZE": 16}))

    def test_rl_dir_records_its_source_and_both_configs(self):
        configs = {"base_config.yaml": self.LM_CONFIG, "rl_config.yaml": {"RL_NUM_ENVS": 4}}
        exp_dir = eu.create_experiment_dir("rl", self.config, configs, rl_config_path=self.rl_config,
                                           source_experiment="20260101-000000-commit_nogit-config_0123456789",
                                           source_checkpoint="experiments/x/transformer-lm_v1.0.0.pth")
        self.assertRegex(exp_dir.name, RL_ID_PATTERN)
        meta = eu.read_experiment_metadata(exp_dir)
        self.assertEqual(meta["type"], "rl")
        self.assertEqual(meta["source_experiment"], "20260101-000000-commit_nogit-config_0123456789")
        self.assertEqual(meta["source_checkpoint"], "experiments/x/transformer-lm_v1.0.0.pth")
        self.assertEqual(meta["rl_config_path"], str(self.rl_config))
        self.assertEqual(meta["rl_config_sha256"], eu.file_sha256(self.rl_config))
        self.assertEqual(yaml.safe_load((exp_dir / "rl_config.yaml").read_text()), {"RL_NUM_ENVS": 4})
        self.assertEqual(yaml.safe_load((exp_dir / "base_config.yaml").read_text()), self.LM_CONFIG)

    def test_rl_dir_requires_the_rl_config(self):
        with self.assertRaises(TidalError):
            eu.create_experiment_dir("rl", self.config, {})

    def test_unknown_kind_is_rejected(self):
        with self.assertRaises(TidalError):
            eu.create_experiment_dir("gan", self.config, {})

    def test_config_file_names_must_be_plain_names(self):
        with self.assertRaises(TidalError):
            eu.create_experiment_dir("lm", self.config, {"../config.yaml": {}})

    def test_two_runs_in_the_same_second_get_distinct_dirs(self):
        same_id = "20260101-120000-commit_nogit-config_0123456789"
        with mock.patch.object(eu, "make_experiment_id", return_value=same_id):
            first = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"A": 1}})
            second = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"A": 2}})
        self.assertEqual(first.name, same_id)
        self.assertNotEqual(first, second)
        self.assertEqual(yaml.safe_load((first / "config.yaml").read_text()), {"A": 1})
        self.assertTrue(eu.is_valid_experiment_id(second.name))
        self.assertEqual(eu.read_experiment_metadata(second)["experiment_id"], second.name)

    def test_preassigned_id_from_the_environment_is_used(self):
        with mock.patch.dict(os.environ, {"TIDAL_EXPERIMENT_ID": "job-42_preassigned"}):
            exp_dir = eu.create_experiment_dir("lm", self.config, {"config.yaml": {}})
        self.assertEqual(exp_dir, self.root.resolve() / "job-42_preassigned")
        self.assertEqual(eu.read_experiment_metadata(exp_dir)["experiment_id"], "job-42_preassigned")

    def test_invalid_preassigned_id_is_rejected(self):
        for bad in ("../escape", ".hidden", "a/b"):
            with mock.patch.dict(os.environ, {"TIDAL_EXPERIMENT_ID": bad}), self.assertRaises(TidalError):
                eu.create_experiment_dir("lm", self.config, {"config.yaml": {}})
        self.assertFalse(self.root.exists() and any(self.root.iterdir()))

    def test_explicit_id_wins_over_the_environment(self):
        with mock.patch.dict(os.environ, {"TIDAL_EXPERIMENT_ID": "from-env"}):
            exp_dir = eu.create_experiment_dir("lm", self.config, {}, experiment_id="explicit")
        self.assertEqual(exp_dir.name, "explicit")
        with self.assertRaises(TidalError):
            eu.create_experiment_dir("lm", self.config, {}, experiment_id="../explicit")

    def test_existing_dir_keeps_its_metadata_and_gets_the_new_configs(self):
        first = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"A": 1}}, experiment_id="resumed")
        original = eu.read_experiment_metadata(first)
        (first / "checkpoint_foundational_epoch_1.pth").write_bytes(b"x")
        again = eu.create_experiment_dir("lm", self.config, {"config.yaml": {"A": 2}}, experiment_id="resumed")
        self.assertEqual(again, first)
        self.assertEqual(eu.read_experiment_metadata(again), original)
        self.assertEqual(yaml.safe_load((again / "config.yaml").read_text()), {"A": 2})
        self.assertTrue((again / "checkpoint_foundational_epoch_1.pth").exists())

    def test_existing_dir_without_metadata_gets_it(self):
        (self.root / "precreated").mkdir(parents=True)
        exp_dir = eu.create_experiment_dir("lm", self.config, {}, experiment_id="precreated")
        self.assertEqual(eu.read_experiment_metadata(exp_dir)["type"], "lm")


class TestReadExperimentMetadata(ExperimentUtilsTestCase):
    def test_missing_or_corrupt_metadata_reads_as_empty(self):
        self.assertEqual(eu.read_experiment_metadata(self.tmp / "nowhere"), {})
        (self.tmp / "metadata.json").write_text("{not json")
        self.assertEqual(eu.read_experiment_metadata(self.tmp), {})
        (self.tmp / "metadata.json").write_text("[1, 2]")
        self.assertEqual(eu.read_experiment_metadata(self.tmp), {})


class TestResolveDevice(unittest.TestCase):
    def test_cpu(self):
        self.assertEqual(eu.resolve_device("cpu"), torch.device("cpu"))

    def test_auto_picks_cuda_only_when_available(self):
        with mock.patch("torch.cuda.is_available", return_value=False):
            self.assertEqual(eu.resolve_device("auto"), torch.device("cpu"))
        with mock.patch("torch.cuda.is_available", return_value=True):
            self.assertEqual(eu.resolve_device("auto"), torch.device("cuda"))

    def test_cuda_without_cuda_is_an_error(self):
        with mock.patch("torch.cuda.is_available", return_value=False):
            for name in ("cuda", "cuda:1"):
                with self.assertRaises(TidalError):
                    eu.resolve_device(name)

    def test_cuda_index_is_kept_when_available(self):
        with mock.patch("torch.cuda.is_available", return_value=True), \
                mock.patch("torch.cuda.device_count", return_value=2):
            self.assertEqual(eu.resolve_device("cuda:1"), torch.device("cuda", 1))
            with self.assertRaises(TidalError):
                eu.resolve_device("cuda:2")

    def test_unknown_device_is_an_error(self):
        for name in ("tpu", "", "cuda:x", "gpu"):
            with self.assertRaises(TidalError):
                eu.resolve_device(name)


if __name__ == "__main__":
    unittest.main()
