"""Experiments API: discovery, metric histories (incremental reads, min/max downsampling with the last point kept),
status, RL metrics, checkpoint classification and result files; disk first, Redis for what is only live."""
from __future__ import annotations

import json
import time
import unittest

import httpx

from core.manifest import load_manifest
from core.testing import slow
from dashboard.server.services.metrics_reader import JsonlTail, downsample
from MetricsLogger import MetricsLogger
from tests.support import (
    DashboardServer,
    LiveDashboardTestCase,
    RedisTestCase,
    TempDirTestCase,
    auth_headers,
    dashboard_settings,
    wait_for,
    write_tiny_experiment,
)

KEYS = load_manifest().redis
LM = "20260101-120000-commit_nogit-config_0123456789"
RL = "20260102-120000-commit_nogit-config_0123456789-rl_abcdef0123"
REMOTE = "20260103-120000-commit_nogit-config_0123456789"


class DownsampleTest(unittest.TestCase):
    def test_spikes_and_the_last_point_survive_and_each_series_is_bounded(self):
        records = [{"step": i, "loss": 1.0, "lr": i * 1e-5} for i in range(10_000)]
        records[4321]["loss"] = 99.0
        records[777]["loss"] = -5.0
        for i in range(0, 10_000, 100):
            records[i]["val"] = float(i)          # a sparse series
        points, done = downsample(records, 200)
        self.assertTrue(done)
        for key in ("loss", "lr", "val"):
            series = [p for p in points if key in p]
            self.assertLessEqual(len(series), 200, key)
            self.assertEqual(series[-1]["step"], records[-1]["step"] if key != "val" else 9900)
        losses = {p["step"]: p["loss"] for p in points if "loss" in p}
        self.assertEqual(losses[4321], 99.0)
        self.assertEqual(losses[777], -5.0)
        self.assertEqual(len([p for p in points if "val" in p]), 100)  # under the bound: every point kept
        self.assertEqual([p["step"] for p in points], sorted(p["step"] for p in points))

    def test_short_series_are_returned_whole_and_keys_filter(self):
        records = [{"step": i, "a": i, "b": -i} for i in range(50)]
        self.assertEqual(downsample(records, 100), (records, False))
        points, done = downsample(records, 100, ["a"])
        self.assertFalse(done)
        self.assertEqual(points[3], {"step": 3, "a": 3})


class JsonlTailTest(TempDirTestCase):
    def test_incremental_reads_tolerate_a_torn_last_line(self):
        path = self.tmp / "m.jsonl"
        path.write_text('{"step": 0}\n{"step": 1}\n{"st')
        tail = JsonlTail()
        records, v1 = tail.read(path)
        self.assertEqual([r["step"] for r in records], [0, 1])
        with open(path, "a") as f:
            f.write('ep": 2}\n{"step": 3}\n')
        self.assertTrue(tail.needs_read(path))
        records, v2 = tail.read(path)
        self.assertEqual([r["step"] for r in records], [0, 1, 2, 3])
        self.assertNotEqual(v1, v2)
        self.assertFalse(tail.needs_read(path))
        path.write_text('{"step": 9}\n')  # replaced (a new run): start over
        self.assertEqual([r["step"] for r in tail.read(path)[0]], [9])


@slow
class ExperimentsApiTest(RedisTestCase):
    def setUp(self):
        super().setUp()
        self.root = self.tmp / "experiments"
        lm_dir, rl_dir = self.root / LM, self.root / RL
        for d in (lm_dir, rl_dir):
            d.mkdir(parents=True)
        (lm_dir / "metadata.json").write_text(json.dumps(
            {"type": "lm", "created_at": 1000.0, "config_path": "plugins/tidal/configs/quickstart_config.yaml"}))
        (rl_dir / "metadata.json").write_text(json.dumps({"type": "rl", "created_at": 2000.0,
                                                          "source_experiment": LM}))
        self.logger = MetricsLogger(lm_dir, redis_url="")
        self.addCleanup(self.logger.close)
        for step in range(3000):
            self.logger.log_metrics({"Losses/Total": 5.0 - step / 1000, "Learning Rate": 1e-3}, step)
        for name in ("checkpoint_foundational_epoch_1.pth", "transformer-lm_v1.0.0.pth", "training_state.pth"):
            (lm_dir / name).write_bytes(b"x")
        (rl_dir / "rl_checkpoint_iter_4.pth").write_bytes(b"x")
        (rl_dir / "rl_checkpoint_final.pth").write_bytes(b"x")
        (lm_dir / "evaluation_results.json").write_text(json.dumps({"perplexity": 12.5}))
        (rl_dir / "ablation_results.json").write_text(json.dumps({"random": {"mean_reward": 0.1}}))
        (rl_dir / "rl_metrics").mkdir()
        self.rl_logger = MetricsLogger(rl_dir, redis_url="")
        self.addCleanup(self.rl_logger.close)
        for it in range(1, 301):
            self.rl_logger.log_rl_metrics({"episode_rewards": it / 100, "policy_loss": -0.01}, it * 64)
        (lm_dir / "config.yaml").write_text("EMBED_DIM: 64\n")
        (rl_dir / "rl_config.yaml").write_text("RL_LEARNING_RATE: 0.001\n")
        (rl_dir / "base_config.yaml").write_text("EMBED_DIM: 64\n")
        (rl_dir / "notes.txt").write_text("not a config")
        (rl_dir / "rl_metrics" / "rl_training_metrics.json").write_text(json.dumps({"global_step": 64}))
        self.server = DashboardServer(dashboard_settings(self.root, self.redis_url)).start()
        self.addCleanup(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        self.addCleanup(self.http.close)

    def test_list(self):
        self.redis.sadd(KEYS.experimentsSet, REMOTE)
        self.redis.set(KEYS.status(REMOTE), json.dumps({"status": "training", "timestamp": time.time()}))
        experiments = {e["id"]: e for e in self.http.get("/api/experiments").json()["experiments"]}
        self.assertEqual(set(experiments), {LM, RL, REMOTE})
        self.assertEqual((experiments[LM]["type"], experiments[LM]["status"]), ("lm", "training"))
        self.assertTrue(experiments[LM]["hasMetrics"] and experiments[LM]["hasEvaluation"])
        self.assertEqual(experiments[RL]["sourceExperiment"], LM)
        self.assertEqual(experiments[LM]["configPath"], "plugins/tidal/configs/quickstart_config.yaml")
        self.assertTrue(experiments[RL]["hasAblation"] and experiments[RL]["hasRLMetrics"])
        self.assertTrue(experiments[REMOTE]["live"])
        self.assertFalse(experiments[REMOTE]["onDisk"])

    def test_metrics_downsampled_recent_and_incremental(self):
        body = self.http.get(f"/api/experiments/{LM}/metrics", params={"maxPoints": 100}).json()
        self.assertEqual((body["originalCount"], body["downsampled"], body["source"]), (3000, True, "disk"))
        loss = [p for p in body["points"] if "Losses/Total" in p]
        self.assertLessEqual(len(loss), 100)
        self.assertEqual(loss[-1]["step"], 2999)
        self.assertEqual(set(body["keys"]), {"Losses/Total", "Learning Rate"})
        recent = self.http.get(f"/api/experiments/{LM}/metrics", params={"mode": "recent", "window": 50}).json()
        self.assertEqual([p["step"] for p in recent["points"]], list(range(2950, 3000)))
        self.logger.log_metrics({"Losses/Total": 0.5}, 3000)
        self.logger.close()
        again = self.http.get(f"/api/experiments/{LM}/metrics", params={"maxPoints": 100}).json()
        self.assertEqual(again["originalCount"], 3001)
        only = self.http.get(f"/api/experiments/{LM}/metrics", params={"keys": "Learning Rate", "mode": "recent",
                                                                       "window": 3}).json()
        self.assertEqual([set(p) for p in only["points"]], [{"step", "timestamp", "Learning Rate"}] * 2)

    def test_rl_series_is_read_from_the_rl_history_and_downsampled_the_same_way(self):
        body = self.http.get(f"/api/experiments/{RL}/metrics", params={"series": "rl", "maxPoints": 50}).json()
        self.assertEqual((body["originalCount"], body["downsampled"]), (300, True))
        rewards = [p for p in body["points"] if "episode_rewards" in p]
        self.assertLessEqual(len(rewards), 50)
        self.assertEqual(rewards[-1]["global_step"], 300 * 64)
        self.assertEqual(set(body["keys"]), {"episode_rewards", "policy_loss"})
        lm = self.http.get(f"/api/experiments/{RL}/metrics").json()  # the LM series of an RL run is empty
        self.assertEqual(lm["points"], [])
        bad = self.http.get(f"/api/experiments/{RL}/metrics", params={"series": "gpu"})
        self.assertEqual(bad.status_code, 422)

    def test_config_files_of_an_experiment(self):
        files = self.http.get(f"/api/experiments/{RL}/config").json()["files"]
        self.assertEqual([f["filename"] for f in files], ["base_config.yaml", "rl_config.yaml"])
        self.assertEqual(files[1]["content"], "RL_LEARNING_RATE: 0.001\n")
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/config").json()["files"][0]["filename"],
                         "config.yaml")
        self.assertEqual(self.http.get("/api/experiments/..etc/config").status_code, 400)

    def test_redis_only_experiment_metrics_and_status(self):
        self.redis.sadd(KEYS.experimentsSet, REMOTE)
        for step in range(5):
            self.redis.xadd(KEYS.metrics_stream(REMOTE), {"kind": "metrics",
                                                          "data": json.dumps({"step": step, "loss": 1.0})})
        self.redis.xadd(KEYS.metrics_stream(REMOTE), {"kind": "status", "data": json.dumps({"status": "training"})})
        self.redis.set(KEYS.status(REMOTE), json.dumps({"status": "training"}))
        body = self.http.get(f"/api/experiments/{REMOTE}/metrics").json()
        self.assertEqual((body["source"], [p["step"] for p in body["points"]]), ("redis", [0, 1, 2, 3, 4]))
        self.assertEqual(self.http.get(f"/api/experiments/{REMOTE}/status").json()["status"]["status"], "training")

    def test_status_prefers_live_redis_over_disk(self):
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/status").json()["status"]["status"], "training")
        self.redis.set(KEYS.status(LM), json.dumps({"status": "completed", "timestamp": time.time() + 1}))
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/status").json()["status"]["status"], "completed")

    def test_the_newer_status_record_wins_whichever_side_it_is_on(self):
        # a run stopped while publishing to Redis, then resumed from the CLI without Redis to completion: status.json
        # is newer than the Redis record, and the API and the sidebar's list must say so
        exp = self.root / LM
        self.logger.close()
        MetricsLogger(exp, redis_url=self.redis_url).finalize("stopped")
        wait_for(lambda: self.redis.get(KEYS.status(LM)), message="the stopped status in Redis")
        MetricsLogger(exp, redis_url="").finalize("completed")

        def status():
            return self.http.get(f"/api/experiments/{LM}/status").json()["status"]["status"]

        def listed():
            return {e["id"]: e for e in self.http.get("/api/experiments").json()["experiments"]}[LM]

        self.assertEqual((status(), listed()["status"], listed()["live"]), ("completed", "completed", False))
        MetricsLogger(exp, redis_url=self.redis_url).finalize("failed", error="boom")  # and newer in Redis again
        wait_for(lambda: "failed" in self.redis.get(KEYS.status(LM)), message="the failed status in Redis")
        (exp / "dashboard_metrics" / "status.json").write_text(json.dumps({"status": "completed", "timestamp": 1.0}))
        self.assertEqual((status(), listed()["status"]), ("failed", "failed"))

    def test_a_failed_run_carries_its_error_and_the_tail_of_its_log(self):
        exp = self.root / LM
        self.logger.finalize("failed", error="dataset 'x': the Hugging Face Hub is unreachable")
        (exp / "training.log").write_text("".join(f"line {i}\n" for i in range(500)) + "error: the hub\n")
        summary = {e["id"]: e for e in self.http.get("/api/experiments").json()["experiments"]}[LM]
        self.assertEqual(summary["status"], "failed")
        self.assertEqual(summary["error"], "dataset 'x': the Hugging Face Hub is unreachable")
        tail = summary["logTail"].splitlines()
        self.assertEqual(tail[-1], "error: the hub")
        self.assertLess(len(tail), 100, "a tail, not the whole log")
        rl = {e["id"]: e for e in self.http.get("/api/experiments").json()["experiments"]}[RL]
        self.assertIsNone(rl["logTail"])  # only a failed run's page shows its log

    def test_checkpoints_are_classified_by_the_manifest(self):
        lm = {c["filename"]: c for c in self.http.get(f"/api/experiments/{LM}/checkpoints").json()["checkpoints"]}
        self.assertEqual((lm["checkpoint_foundational_epoch_1.pth"]["phase"],
                          lm["checkpoint_foundational_epoch_1.pth"]["epoch"]), ("foundational", 1))
        self.assertEqual(lm["transformer-lm_v1.0.0.pth"]["phase"], "final")
        self.assertEqual(lm["training_state.pth"]["phase"], "unknown")
        self.assertEqual(lm["transformer-lm_v1.0.0.pth"]["path"], f"experiments/{LM}/transformer-lm_v1.0.0.pth")
        rl = {c["filename"]: c for c in self.http.get(f"/api/experiments/{RL}/checkpoints").json()["checkpoints"]}
        self.assertEqual((rl["rl_checkpoint_iter_4.pth"]["phase"], rl["rl_checkpoint_iter_4.pth"]["epoch"]), ("rl", 4))
        self.assertEqual(rl["rl_checkpoint_final.pth"]["phase"], "rl")

    def test_result_files_and_rl_metrics(self):
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/evaluation").json()["results"], {"perplexity": 12.5})
        self.assertIsNone(self.http.get(f"/api/experiments/{LM}/ablation").json()["results"])
        self.assertEqual(self.http.get(f"/api/experiments/{RL}/ablation").json()["results"]["random"],
                         {"mean_reward": 0.1})
        self.assertEqual(self.http.get(f"/api/experiments/{RL}/rl-metrics").json()["metrics"], {"global_step": 64})
        self.redis.set(KEYS.rl_latest(RL), json.dumps({"global_step": 128}))
        self.assertEqual(self.http.get(f"/api/experiments/{RL}/rl-metrics").json()["metrics"], {"global_step": 128})


OTHER = "20260104-120000-commit_nogit-config_9876543210"


class RunAnnotationsAndTableTest(LiveDashboardTestCase):
    """Names, tags and notes kept in metadata.json (PATCH, token needed); the runs table with effective configs and
    final metrics; the config diff between two runs."""

    @classmethod
    def populate(cls, root):
        for exp_id, batch, lr in ((LM, 8, 0.001), (OTHER, 16, 0.001)):
            exp_dir = write_tiny_experiment(root, exp_id, steps=20)
            (exp_dir / "config.yaml").write_text(
                f"EMBED_DIM: 32\nBATCH_SIZE: {batch}\nSCHEDULER:\n  BASE_LR: {lr}\n"
                + ("DROPOUT: 0.1\n" if exp_id == OTHER else ""))
        with open(root / LM / "dashboard_metrics" / "metrics.jsonl", "a") as f:  # a sparse series, logged earlier
            f.write(json.dumps({"step": 20, "timestamp": 1.0, "Losses/Validation": 3.5}) + "\n")
            f.write(json.dumps({"step": 21, "timestamp": 2.0, "Losses/Total": 4.0}) + "\n")

    def patch(self, exp_id, body, token=True):
        return self.http.patch(f"/api/experiments/{exp_id}", json=body, headers=auth_headers() if token else {})

    def summary(self, exp_id):
        return {e["id"]: e for e in self.http.get("/api/experiments").json()["experiments"]}[exp_id]

    def test_name_tags_and_notes_are_kept_in_the_metadata_file(self):
        r = self.patch(OTHER, {"name": "wider batch", "tags": ["baseline", " sweep ", "baseline"], "notes": "try 16"})
        self.assertEqual(r.status_code, 200, r.text)
        self.assertEqual((r.json()["experiment"]["name"], r.json()["experiment"]["tags"]),
                         ("wider batch", ["baseline", "sweep"]))
        meta = json.loads((self.root / OTHER / "metadata.json").read_text())
        self.assertEqual((meta["name"], meta["tags"], meta["notes"]), ("wider batch", ["baseline", "sweep"], "try 16"))
        self.assertEqual(meta["type"], "lm")                                    # the rest of the metadata is kept
        self.assertEqual(self.patch(OTHER, {"notes": "second thought"}).status_code, 200)
        summary = self.summary(OTHER)
        self.assertEqual((summary["name"], summary["tags"], summary["notes"]),
                         ("wider batch", ["baseline", "sweep"], "second thought"))  # only the given field changes
        self.assertEqual(self.patch(OTHER, {"name": None}).json()["experiment"]["name"], None)
        self.assertEqual(list((self.root / OTHER).glob("*.tmp")), [])          # written atomically

    def test_annotations_need_the_token_and_valid_fields(self):
        self.assertEqual(self.patch(LM, {"name": "x"}, token=False).status_code, 401)
        for body, field in [({"name": "x" * 201}, "name"), ({"tags": "a,b"}, "tags"), ({"tags": ["x" * 65]}, "tags"),
                            ({"tags": [str(i) for i in range(40)]}, "tags"), ({"title": "x"}, "title"),
                            ({"notes": "x" * 20_001}, "notes")]:
            with self.subTest(body=str(body)[:40]):
                r = self.patch(LM, body)
                self.assertEqual(r.status_code, 422, r.text)
                self.assertIn(field, json.dumps(r.json()["detail"]))
        self.assertEqual(self.patch("20990101-000000-commit_nogit-config_ffffffffff", {"name": "x"}).status_code, 404)
        self.assertEqual(self.patch("..etc", {"name": "x"}).status_code, 400)

    def test_the_runs_table_has_effective_hyperparameters_and_final_metrics(self):
        body = self.http.get("/api/experiments/table").json()
        rows = {r["id"]: r for r in body["runs"]}
        self.assertLessEqual({LM, OTHER}, set(rows))
        self.assertEqual(rows[OTHER]["params"]["BATCH_SIZE"], 16)
        self.assertEqual(rows[LM]["params"]["SCHEDULER.BASE_LR"], 0.001)         # nested keys flattened
        self.assertEqual(rows[LM]["final"]["Losses/Total"], 4.0)                 # the last value of each series
        self.assertEqual(rows[LM]["final"]["Losses/Validation"], 3.5)            # a sparse one too
        self.assertNotIn("step", rows[LM]["final"])
        self.assertIn("BATCH_SIZE", body["paramKeys"])
        self.assertIn("Losses/Total", body["metricKeys"])

    def test_config_diff_names_changed_added_and_removed_keys(self):
        body = self.http.get(f"/api/experiments/{LM}/config-diff", params={"other": OTHER}).json()
        diff = {d["key"]: d for d in body["differences"]}
        self.assertEqual(diff["BATCH_SIZE"], {"key": "BATCH_SIZE", "a": 8, "b": 16, "change": "changed"})
        self.assertEqual(diff["DROPOUT"], {"key": "DROPOUT", "a": None, "b": 0.1, "change": "added"})
        self.assertNotIn("EMBED_DIM", diff)
        self.assertEqual(body["same"], 2)
        missing = self.http.get(f"/api/experiments/{LM}/config-diff",
                                params={"other": "20990101-000000-commit_nogit-config_ffffffffff"})
        self.assertEqual(missing.status_code, 404)
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/config-diff", params={"other": "../x"}).status_code, 400)
        self.assertEqual(self.http.get(f"/api/experiments/{LM}/config-diff").status_code, 422)

    def test_system_metrics_are_served_as_their_own_series(self):
        logger = MetricsLogger(self.root / OTHER, redis_url="", system_interval_s=0)
        logger.log_metrics({"Losses/Total": 1.0}, 99)
        logger.close()
        body = self.http.get(f"/api/experiments/{OTHER}/metrics", params={"series": "system"}).json()
        self.assertIn("System/RSS MB", body["keys"])
        self.assertEqual(body["points"][-1]["step"], 99)

if __name__ == "__main__":
    unittest.main()
