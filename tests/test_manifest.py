"""The plugin manifest: parsed once into typed objects, validated with errors that name the file and the field."""
from __future__ import annotations

import unittest

import yaml

from core import names
from core.manifest import DEFAULT_MANIFEST_PATH, ManifestError, load_manifest
from dashboard.server.services.plugin_registry import PluginRegistry
from tests.support import TempDirTestCase


class ShippedManifestTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.manifest = load_manifest(DEFAULT_MANIFEST_PATH)

    def test_identity_and_phases(self):
        m = self.manifest
        self.assertEqual(m.name, "tidal")
        self.assertEqual([p.id for p in m.trainingPhases], ["lm-training", "rl-training"])
        self.assertEqual(m.phase("lm-training").entrypoint, "plugins.tidal.Main")
        self.assertEqual(m.phase("rl-training").entrypoint, "plugins.tidal.train_rl")
        self.assertEqual({p.concurrency for p in m.trainingPhases}, {1})
        self.assertIsNone(m.phase("nope"))

    def test_commands_are_built_from_the_args_mapping(self):
        lm = self.manifest.phase("lm-training")
        self.assertEqual(lm.build_args({"config": "c.yaml"}), ["--config", "c.yaml"])
        self.assertEqual(lm.build_args({"config": "c.yaml", "resume": "d", "maxSteps": 3}),
                         ["--config", "c.yaml", "--resume", "d", "--max-steps", "3"])
        self.assertEqual(lm.build_args({"config": "c.yaml", "overrides": {"BATCH_SIZE": 8, "S.LR": 1e-3, "D": "x y"}}),
                         ["--config", "c.yaml", "--set", "BATCH_SIZE=8", "--set", "S.LR=0.001", "--set", 'D="x y"'])
        rl = self.manifest.phase("rl-training")
        self.assertEqual(rl.build_args({"config": "a", "rlConfig": "b", "checkpoint": "c", "timesteps": 5000}),
                         ["--config", "a", "--rl-config", "b", "--checkpoint", "c", "--timesteps", "5000"])
        self.assertEqual(rl.required, ["config", "rlConfig", "checkpoint"])

    def test_default_job_configs_and_the_readme_job_example_train_offline(self):
        # the Jobs form preselects each phase's configFiles, and the README's first job example is what a new user
        # copies: both must train on the built-in corpus, not a hub dataset that fails without a network
        import json
        import re

        from core.paths import PROJECT_ROOT
        from plugins.tidal.Utils import PLUGIN_DIR, read_yaml

        for phase in self.manifest.trainingPhases:
            with self.subTest(phase=phase.id):
                self.assertEqual(read_yaml(PLUGIN_DIR / phase.configFiles[0])["DATASET"], "builtin:tinytales")
        readme = (PROJECT_ROOT / "README.md").read_text()
        body = re.search(r"curl -X POST \S+/api/jobs .*?-d '(\{.*?\})'", readme, re.S).group(1)
        job = json.loads(body)
        self.assertEqual(job["type"], "lm-training")
        self.assertEqual(read_yaml(PLUGIN_DIR / job["configPath"])["DATASET"], "builtin:tinytales")

    def test_checkpoint_classification_in_pattern_order(self):
        c = self.manifest.classify_checkpoint
        self.assertEqual(c("checkpoint_foundational_epoch_3.pth"), ("foundational", 3))
        self.assertEqual(c("checkpoint_foundational_epoch_120.pth"), ("foundational", 120))
        self.assertEqual(c("rl_checkpoint_iter_40.pth"), ("rl", 40))
        self.assertEqual(c("rl_checkpoint_final.pth"), ("rl", None))
        self.assertEqual(c("transformer-lm_v1.0.0.pth"), ("final", None))
        self.assertEqual(c("rl_agent_v2.pth"), ("unknown", None))  # excludePrefix rl_ keeps it out of "final"
        self.assertEqual(c("training_state.pth"), ("unknown", None))
        self.assertTrue(self.manifest.is_rl_checkpoint("rl_checkpoint_final.pth"))

    def test_generation_modes_and_parameter_ranges(self):
        g = self.manifest.generation
        self.assertEqual([m.id for m in g.modes], ["none", "fixed", "random", "learned"])
        self.assertTrue(g.mode("learned").requiresRLCheckpoint)
        t, k, n = g.parameter("temperature"), g.parameter("topK"), g.parameter("maxTokens")
        self.assertEqual((t.min, t.max, t.default), (0.1, 2.0, 0.8))
        self.assertEqual((k.min, k.max, k.default), (1, 200, 50))
        self.assertEqual((n.min, n.max, n.default), (10, 500, 50))

    def test_metrics_and_redis_keys(self):
        m = self.manifest
        self.assertEqual(m.redis.jobsHash, "tidal:jobs")
        self.assertEqual(m.redis.jobsActiveSet, "tidal:jobs:active")
        self.assertEqual(m.redis.updatesChannel, "tidal:job:updates")
        self.assertEqual(m.redis.heartbeat("j1"), "tidal:worker:j1:heartbeat")
        self.assertEqual(m.redis.logs("j1"), "tidal:logs:j1")
        self.assertEqual(m.redis.metrics_stream("e1"), "tidal:metrics:e1:stream")
        self.assertEqual(m.redis.status("e1"), "tidal:status:e1")

    # The manifest declares names that code below the dashboard writes too: each is defined once (core.names, the
    # plugin) and the manifest must declare exactly that, or the dashboard would read what nobody writes.
    def test_redis_keys_are_core_names(self):
        from MetricsLogger import RedisKeys

        self.assertEqual(self.manifest.redis.model_dump(), names.REDIS_KEYS)
        logger_keys = RedisKeys.for_experiment("e1")  # what the trainers' MetricsLogger writes
        r = self.manifest.redis
        self.assertEqual((logger_keys.stream, logger_keys.latest, logger_keys.status, logger_keys.rl_latest,
                          logger_keys.experiments),
                         (r.metrics_stream("e1"), r.metrics_latest("e1"), r.status("e1"), r.rl_latest("e1"),
                          r.experimentsSet))

    def test_artifact_files_are_core_names(self):
        metrics = self.manifest.metrics
        self.assertEqual(
            (metrics.lm.directory, metrics.lm.historyFile, metrics.lm.statusFile, metrics.lm.latestFile,
             metrics.rl.directory, metrics.rl.metricsFile, metrics.rl.historyFile, metrics.evaluationFile,
             metrics.ablationFile),
            (names.METRICS_DIRNAME, names.METRICS_FILE, names.STATUS_FILE, names.LATEST_FILE,
             names.RL_METRICS_DIRNAME, names.RL_TRAINING_METRICS_FILE, names.RL_METRICS_FILE, names.EVALUATION_FILE,
             names.ABLATION_FILE))

    def test_gating_modes_and_reward_components_are_the_plugins(self):
        from plugins.tidal.RewardComputer import COMPONENTS

        self.assertEqual(tuple(m.id for m in self.manifest.generation.modes), names.GATING_MODES)
        self.assertEqual(tuple(self.manifest.metrics.rl.rewardComponents), COMPONENTS)

    def test_registry_parses_once(self):
        registry = PluginRegistry.load()
        self.assertEqual(registry.names(), ["tidal"])
        self.assertIs(registry.get("tidal"), registry.default)
        self.assertIsNone(registry.get("other"))


class InvalidManifestTest(TempDirTestCase):
    def write(self, mutate) -> str:
        data = yaml.safe_load(DEFAULT_MANIFEST_PATH.read_text())
        mutate(data)
        path = self.tmp / "manifest.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    def assert_rejected(self, mutate, *fragments):
        path = self.write(mutate)
        with self.assertRaises(ManifestError) as ctx:
            load_manifest(path)
        message = str(ctx.exception)
        self.assertIn(path, message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_missing_section_names_the_field(self):
        self.assert_rejected(lambda d: d.pop("generation"), "field generation")

    def test_bad_concurrency_names_the_phase_field(self):
        self.assert_rejected(lambda d: d["trainingPhases"][0].update(concurrency=0),
                             "trainingPhases[0].concurrency")

    def test_unknown_argument_and_flag(self):
        self.assert_rejected(lambda d: d["trainingPhases"][1]["args"].update(bogus="--bogus"), "bogus")
        self.assert_rejected(lambda d: d["trainingPhases"][0]["args"].update(config="config"),
                             "not a long CLI flag")

    def test_parameter_default_outside_range(self):
        def mutate(d):
            d["generation"]["parameters"][0]["default"] = 9.0
        self.assert_rejected(mutate, "generation.parameters[0]")

    def test_unknown_gpu_tier_and_typo_field(self):
        self.assert_rejected(lambda d: d["trainingPhases"][0].update(gpuTier="huge"), "gpuTier")
        self.assert_rejected(lambda d: d.update(trainingPhase=[]), "trainingPhase")

    def test_missing_file_and_bad_yaml(self):
        with self.assertRaises(ManifestError) as ctx:
            load_manifest(self.tmp / "absent.yaml")
        self.assertIn("absent.yaml", str(ctx.exception))
        bad = self.tmp / "bad.yaml"
        bad.write_text("name: [unclosed\n")
        with self.assertRaises(ManifestError) as ctx:
            load_manifest(bad)
        self.assertIn("not valid YAML", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
