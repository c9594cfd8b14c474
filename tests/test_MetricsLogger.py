"""MetricsLogger: every record on disk (the record) and in Redis (live), and the failure policy when Redis is gone."""
from __future__ import annotations

import json
import math
import os
import socket
import time
import unittest
from unittest import mock

import torch

from core.io import read_jsonl, read_jsonl_since
from core.net import announce_redis_url, free_port
from MetricsLogger import MetricsLogger, RedisKeys
from tests.support import RedisTestCase, TempDirTestCase, wait_for

LOGGER_NAME = "tidal.metrics"
EXP_ID = "20260101-000000-commit_nogit-config_0123456789"


def stream_id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def outage_lines(logs) -> list[str]:
    return [line for line in logs.output if "unavailable" in line]


def reconnect_lines(logs) -> list[str]:
    return [line for line in logs.output if "reconnected" in line]


class TestDiskRecord(TempDirTestCase):
    """Without Redis (redis_url="") the logger writes the same files, silently."""

    def setUp(self) -> None:
        super().setUp()
        self.exp_dir = self.tmp / EXP_ID
        self.metrics_dir = self.exp_dir / "dashboard_metrics"

    def logger(self, **kwargs) -> MetricsLogger:
        logger = MetricsLogger(self.exp_dir, redis_url="", **kwargs)
        self.addCleanup(logger.close)
        return logger

    def status(self) -> dict:
        return json.loads((self.metrics_dir / "status.json").read_text())

    def test_metrics_jsonl_has_one_line_per_step_with_float_epoch_timestamp(self):
        logger = self.logger()
        before = time.time()
        for step in range(3):
            logger.log_metrics({"Losses/Total": 2.0 - step, "Learning Rate": 1e-3}, step)
        lines = (self.metrics_dir / "metrics.jsonl").read_text().splitlines()
        self.assertEqual(len(lines), 3)  # flushed per record: readable before close
        records = [json.loads(line) for line in lines]
        self.assertEqual([r["step"] for r in records], [0, 1, 2])
        self.assertEqual(records[2]["Losses/Total"], 0.0)
        for r in records:
            self.assertIsInstance(r["timestamp"], float)
            self.assertGreaterEqual(r["timestamp"], before)
            self.assertLess(r["timestamp"], before + 60)  # seconds, not milliseconds

    def latest(self) -> dict:
        return json.loads((self.metrics_dir / "latest.json").read_text())

    def test_latest_json_is_written_at_once_then_at_most_every_interval_and_at_close(self):
        logger = self.logger()
        logger.log_metrics({"loss": 3.0}, 1)
        self.assertEqual(self.latest()["step"], 1)
        logger.log_metrics({"loss": 2.5}, 2)  # within LATEST_INTERVAL_S: latest.json may lag, the jsonl may not
        logger.close()
        self.assertEqual((self.latest()["step"], self.latest()["loss"]), (2, 2.5))
        self.assertEqual(sorted(p.name for p in self.metrics_dir.iterdir()), ["latest.json", "metrics.jsonl",
                                                                                 "status.json", "system.jsonl"])

    def test_latest_json_follows_every_record_when_the_interval_allows(self):
        with mock.patch("MetricsLogger.LATEST_INTERVAL_S", 0.0):
            logger = self.logger()
            for step in range(3):
                logger.log_metrics({"loss": 1.0}, step)
                self.assertEqual(self.latest()["step"], step)

    def test_status_goes_initialized_then_training_then_completed(self):
        logger = self.logger()
        status = self.status()
        self.assertEqual(status["status"], "initialized")
        self.assertEqual(status["experiment_id"], EXP_ID)
        self.assertIsInstance(status["timestamp"], float)
        logger.log_metrics({"loss": 1.0}, 0)  # the first record marks the run as training
        self.assertEqual(self.status()["status"], "training")
        logger.finalize()
        self.assertEqual(self.status()["status"], "completed")

    def test_set_status_carries_extra_fields(self):
        logger = self.logger()
        logger.set_status("training", total_steps=100)
        logger.finalize("failed", error="CUDA out of memory")
        status = self.status()
        self.assertEqual((status["status"], status["error"]), ("failed", "CUDA out of memory"))

    def test_unknown_status_is_rejected(self):
        logger = self.logger()
        with self.assertRaises(ValueError):
            logger.set_status("running")
        with self.assertRaises(ValueError):
            logger.finalize("training")  # finalize needs a terminal status
        with self.assertRaises(ValueError):
            logger.set_status("failed", timestamp=0.0)  # extra may not overwrite the record's own fields
        self.assertEqual(self.status()["status"], "initialized")

    def test_finalize_is_idempotent_and_the_logger_is_closed_after_it(self):
        logger = self.logger()
        logger.finalize("stopped")
        logger.finalize("completed")
        logger.close()
        self.assertEqual(self.status()["status"], "stopped")
        with self.assertRaises(ValueError):
            logger.log_metrics({"loss": 1.0}, 5)

    def test_rl_history_is_recorded_as_its_latest_values(self):
        logger = self.logger()
        logger.log_rl_metrics({"episode_rewards": [0.1, 0.2], "policy_loss": [0.5, 0.4], "entropy_coef": 0.01},
                              global_step=256)
        logger.log_rl_metrics({"episode_rewards": [0.1, 0.2, 0.3], "policy_loss": [0.5, 0.4, 0.3],
                               "gate_loss": []}, global_step=512)
        records = read_jsonl(self.metrics_dir / "rl_metrics.jsonl")
        self.assertEqual([r["global_step"] for r in records], [256, 512])
        self.assertEqual(records[0]["episode_rewards"], 0.2)
        self.assertEqual(records[0]["entropy_coef"], 0.01)
        self.assertEqual(records[1]["policy_loss"], 0.3)
        self.assertNotIn("gate_loss", records[1])  # an empty history has no latest value
        self.assertIsInstance(records[1]["timestamp"], float)

    def test_rl_file_exists_only_once_rl_metrics_are_logged(self):
        logger = self.logger()
        logger.log_metrics({"loss": 1.0}, 0)
        self.assertFalse((self.metrics_dir / "rl_metrics.jsonl").exists())

    def test_reserved_record_keys_are_rejected(self):
        logger = self.logger()
        with self.assertRaises(ValueError):
            logger.log_metrics({"step": 3}, 3)
        with self.assertRaises(ValueError):
            logger.log_rl_metrics({"timestamp": [1.0]}, 3)

    def test_tensors_become_numbers_and_non_finite_values_become_null(self):
        logger = self.logger()
        logger.log_metrics({"loss": torch.tensor(1.5), "nan": float("nan"), "inf": math.inf, "n": torch.tensor(3)},
                           torch.tensor(7).item())
        line = (self.metrics_dir / "metrics.jsonl").read_text().strip()
        self.assertNotIn("NaN", line)  # strict JSON: a browser's JSON.parse must accept every line
        record = json.loads(line)
        self.assertEqual((record["step"], record["loss"], record["nan"], record["inf"], record["n"]),
                         (7, 1.5, None, None, 3))

    def test_experiment_id_defaults_to_the_directory_name_and_is_validated(self):
        self.assertEqual(self.logger().experiment_id, EXP_ID)
        with self.assertRaises(ValueError):
            MetricsLogger(self.tmp / "run", experiment_id="../escape", redis_url="")

    def test_disk_only_logger_logs_nothing(self):
        with self.assertNoLogs(LOGGER_NAME):
            logger = self.logger()
            logger.log_metrics({"loss": 1.0}, 0)
            logger.finalize()

    def test_system_metrics_are_sampled_at_the_first_record_then_at_most_every_interval(self):
        import psutil

        logger = self.logger(system_interval_s=3600)
        for step in range(5):
            logger.log_metrics({"loss": 1.0}, step)
        logger.log_rl_metrics({"episode_rewards": 1.0}, 64)
        samples = read_jsonl(self.metrics_dir / "system.jsonl")
        self.assertEqual(len(samples), 1)                       # once, not per training step
        sample = samples[0]
        self.assertEqual(sample["step"], 0)
        self.assertGreaterEqual(sample["System/CPU %"], 0.0)
        rss_mb = psutil.Process().memory_info().rss / 2**20
        self.assertLess(abs(sample["System/RSS MB"] - rss_mb), rss_mb * 0.5)
        if not torch.cuda.is_available():
            self.assertNotIn("System/GPU memory MB", sample)      # no made-up GPU figures on a CPU box
        self.assertNotIn("System/CPU %", read_jsonl(self.metrics_dir / "metrics.jsonl")[0])  # training record intact

    def test_system_metrics_follow_the_rl_history_and_can_be_switched_off(self):
        logger = self.logger(system_interval_s=0)
        logger.log_rl_metrics({"episode_rewards": 1.0}, 64)
        logger.log_rl_metrics({"episode_rewards": 1.0}, 128)
        self.assertEqual([s["step"] for s in read_jsonl(self.metrics_dir / "system.jsonl")], [64, 128])
        quiet = MetricsLogger(self.tmp / "quiet", redis_url="", system_interval_s=None)
        self.addCleanup(quiet.close)
        quiet.log_metrics({"loss": 1.0}, 0)
        self.assertFalse((self.tmp / "quiet" / "dashboard_metrics" / "system.jsonl").exists())

    def test_resumed_run_appends_after_a_torn_line(self):
        self.metrics_dir.mkdir(parents=True)
        (self.metrics_dir / "metrics.jsonl").write_text('{"step": 0, "timestamp": 1.0}\n{"step": 1, "timest')
        logger = self.logger()
        logger.log_metrics({"loss": 1.0}, 1)
        self.assertEqual([r["step"] for r in read_jsonl(self.metrics_dir / "metrics.jsonl")], [0, 1])


class TestReadJsonl(TempDirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.path = self.tmp / "metrics.jsonl"

    def test_missing_file_reads_as_empty(self):
        self.assertEqual(read_jsonl(self.path), [])

    def test_torn_last_line_is_skipped(self):
        self.path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "lo')
        self.assertEqual(read_jsonl(self.path), [{"step": 0}, {"step": 1}])

    def test_corrupt_line_in_the_middle_is_skipped(self):
        self.path.write_text('{"step": 0}\n{"step": 1, "lo\n{"step": 2}\n')
        self.assertEqual(read_jsonl(self.path), [{"step": 0}, {"step": 2}])

    def test_read_since_resumes_from_an_offset_and_waits_for_a_torn_line_to_complete(self):
        # the one incremental reader: the dashboard's charts and the remote worker's metric forwarding tail with it
        self.assertEqual(read_jsonl_since(self.path, 0), ([], 0))
        self.path.write_text('{"step": 0}\n[1, 2]\n{"step": 1')
        records, offset = read_jsonl_since(self.path, 0)
        self.assertEqual(records, [{"step": 0}])  # a line that is not an object is skipped, the torn one left
        with open(self.path, "a") as f:
            f.write(', "loss": 2.0}\n{"step": 2}\n')
        first, after_one = read_jsonl_since(self.path, offset, max_bytes=len('{"step": 1, "loss": 2.0}\n') + 3)
        self.assertEqual(first, [{"step": 1, "loss": 2.0}])  # max_bytes: only the complete lines within it
        records, offset = read_jsonl_since(self.path, after_one)
        self.assertEqual(records, [{"step": 2}])
        self.assertEqual(read_jsonl_since(self.path, offset), ([], offset))


class TestRedisLive(RedisTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.exp_dir = self.tmp / EXP_ID
        self.stream = f"tidal:metrics:{EXP_ID}:stream"

    def logger(self, **kwargs) -> MetricsLogger:
        logger = MetricsLogger(self.exp_dir, redis_url=self.redis_url, **kwargs)
        self.addCleanup(logger.close)
        return logger

    def entries(self) -> list[tuple[str, str, dict]]:
        return [(eid, f["kind"], json.loads(f["data"])) for eid, f in self.redis.xrange(self.stream)]

    def metric_steps(self) -> list[int]:
        return [data["step"] for _, kind, data in self.entries() if kind == "metrics"]

    def test_with_redis_url_unset_the_redis_a_dashboard_announced_is_found(self):
        # a run started from the command line, next to a running dashboard, is live with no configuration
        announce_redis_url(self.tmp, self.redis_url)
        with mock.patch.dict(os.environ):
            os.environ.pop("REDIS_URL", None)
            logger = MetricsLogger(self.exp_dir)
            logger.log_metrics({"loss": 1.0}, 0)
            logger.finalize()
        self.assertEqual(self.metric_steps(), [0])
        other = self.tmp / "20260101-000001-commit_nogit-config_0123456789"
        with mock.patch.dict(os.environ, {"REDIS_URL": ""}):  # an empty REDIS_URL still means disk only
            MetricsLogger(other).finalize()
        self.assertFalse(self.redis.exists(f"tidal:status:{other.name}"))

    def test_key_names_are_the_documented_ones(self):
        keys = RedisKeys.for_experiment(EXP_ID)
        self.assertEqual((keys.stream, keys.latest, keys.status, keys.rl_latest, keys.experiments),
                         (self.stream, f"tidal:metrics:{EXP_ID}:latest", f"tidal:status:{EXP_ID}",
                          f"tidal:rl:{EXP_ID}:latest", "tidal:experiments"))

    def test_every_record_is_added_to_one_stream_in_order(self):
        logger = self.logger()
        for step in range(5):
            logger.log_metrics({"loss": 1.0 / (step + 1)}, step)
        logger.log_rl_metrics({"episode_rewards": [0.5]}, 128)
        logger.finalize()
        entries = self.entries()
        self.assertEqual([kind for _, kind, _ in entries],
                         ["status", "status"] + ["metrics"] * 5 + ["rl-metrics", "status"])
        self.assertEqual([data["status"] for _, kind, data in entries if kind == "status"],
                         ["initialized", "training", "completed"])
        ids = [stream_id(eid) for eid, _, _ in entries]
        self.assertEqual(ids, sorted(set(ids)))  # strictly increasing: usable as SSE event ids
        metrics_dir = self.exp_dir / "dashboard_metrics"
        self.assertEqual([data for _, kind, data in entries if kind == "metrics"],
                         read_jsonl(metrics_dir / "metrics.jsonl"))
        self.assertEqual([data for _, kind, data in entries if kind == "rl-metrics"],
                         read_jsonl(metrics_dir / "rl_metrics.jsonl"))

    def test_latest_status_rl_keys_and_experiment_set(self):
        logger = self.logger()
        logger.log_metrics({"loss": 2.0}, 10)
        logger.log_metrics({"loss": 1.5}, 11)
        logger.log_rl_metrics({"policy_loss": [0.3, 0.2]}, 64)
        wait_for(lambda: self.redis.get(f"tidal:rl:{EXP_ID}:latest"), message="rl latest key")
        latest = json.loads(self.redis.get(f"tidal:metrics:{EXP_ID}:latest"))
        self.assertEqual((latest["step"], latest["loss"]), (11, 1.5))
        self.assertEqual(json.loads(self.redis.get(f"tidal:rl:{EXP_ID}:latest"))["policy_loss"], 0.2)
        self.assertEqual(json.loads(self.redis.get(f"tidal:status:{EXP_ID}"))["status"], "training")
        self.assertTrue(self.redis.sismember("tidal:experiments", EXP_ID))
        logger.finalize("stopped")
        status = json.loads(self.redis.get(f"tidal:status:{EXP_ID}"))
        self.assertEqual(status, json.loads((self.exp_dir / "dashboard_metrics" / "status.json").read_text()))
        self.assertEqual(status["status"], "stopped")

    def test_stream_is_trimmed_approximately_to_maxlen(self):
        logger = self.logger(stream_maxlen=10)
        for step in range(500):
            logger.log_metrics({"loss": 1.0}, step)
        logger.finalize()
        length = self.redis.xlen(self.stream)
        # MAXLEN ~ trims whole radix-tree nodes (100 entries by default), so up to ~one node beyond maxlen remains.
        self.assertGreaterEqual(length, 10)
        self.assertLessEqual(length, 10 + 100)
        self.assertEqual(self.metric_steps()[-1], 499)
        self.assertEqual(len(read_jsonl(self.exp_dir / "dashboard_metrics" / "metrics.jsonl")), 500)

    def test_finalize_drains_every_queued_record_before_returning(self):
        logger = self.logger()
        for step in range(300):
            logger.log_metrics({"loss": 1.0}, step)
        logger.finalize()  # no wait: everything must be in Redis when finalize returns
        self.assertEqual(self.metric_steps(), list(range(300)))
        self.assertEqual(json.loads(self.redis.get(f"tidal:status:{EXP_ID}"))["status"], "completed")

    def test_redis_lost_and_restored_mid_run(self):
        logger = self.logger()
        step = 0

        def log_next():
            nonlocal step
            logger.log_metrics({"loss": 1.0}, step)
            step += 1

        with self.assertLogs(LOGGER_NAME, "WARNING") as logs:
            for _ in range(10):
                log_next()
            wait_for(lambda: len(self.metric_steps()) == 10, message="first 10 steps in the stream")
            self.redis_server.stop()
            # Keep training until the logger has noticed the outage.
            wait_for(lambda: log_next() or outage_lines(logs), message="the outage warning")
            for _ in range(10):
                log_next()
            restarted_at = step
            self.redis_server.start()  # same port, empty database
            wait_for(lambda: log_next() or reconnect_lines(logs), message="the reconnect line")
            wait_for(lambda: log_next() or self.metric_steps(), message="live steps after the restart")
            logger.finalize()

        self.assertEqual(len(outage_lines(logs)), 1, logs.output)
        self.assertEqual(len(reconnect_lines(logs)), 1, logs.output)
        disk_steps = [r["step"] for r in read_jsonl(self.exp_dir / "dashboard_metrics" / "metrics.jsonl")]
        self.assertEqual(disk_steps, list(range(step)))  # the record is complete
        live_steps = self.metric_steps()
        self.assertGreaterEqual(min(live_steps), restarted_at)  # the stream continues with later steps
        self.assertEqual(live_steps, sorted(live_steps))
        self.assertEqual(live_steps[-1], step - 1)
        self.assertGreater(logger.dropped_live_updates, 0)
        # The restarted server learns the experiment and its current status on reconnection.
        self.assertTrue(self.redis.sismember("tidal:experiments", EXP_ID))
        self.assertEqual(json.loads(self.redis.get(f"tidal:status:{EXP_ID}"))["status"], "completed")


class TestRedisUnreachable(TempDirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.exp_dir = self.tmp / EXP_ID

    def test_redis_absent_at_start_keeps_everything_on_disk_with_one_warning(self):
        url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
        with self.assertLogs(LOGGER_NAME, "WARNING") as logs:
            logger = MetricsLogger(self.exp_dir, redis_url=url)
            started = time.perf_counter()
            for step in range(200):
                logger.log_metrics({"loss": 1.0, "lr": 1e-3}, step)
            elapsed = time.perf_counter() - started
            logger.finalize()
        self.assertLess(elapsed, 0.5)
        self.assertEqual(len(logs.output), 1, logs.output)
        self.assertIn("unavailable", logs.output[0])
        self.assertEqual(len(read_jsonl(self.exp_dir / "dashboard_metrics" / "metrics.jsonl")), 200)
        # initialized + training + 200 metrics + completed: none could be published, each counted once.
        self.assertEqual(logger.dropped_live_updates, 203)

    def test_a_stale_announcement_is_ignored_without_a_warning(self):
        # the dashboard that wrote it is gone (SIGKILL): nothing answers on its port, so the run is disk only
        announce_redis_url(self.tmp, f"redis://127.0.0.1:{free_port()}/0")
        with mock.patch.dict(os.environ), self.assertNoLogs(LOGGER_NAME, "WARNING"):
            os.environ.pop("REDIS_URL", None)
            logger = MetricsLogger(self.exp_dir)
            logger.log_metrics({"loss": 1.0}, 0)
            logger.finalize()
        self.assertEqual(logger.dropped_live_updates, 0, "no live publisher at all")

    def test_hung_redis_never_blocks_the_training_loop(self):
        # A socket that accepts connections (kernel backlog) but never answers: every Redis call would hang.
        with socket.create_server(("127.0.0.1", 0)) as hung:
            url = f"redis://127.0.0.1:{hung.getsockname()[1]}/0"
            with self.assertLogs(LOGGER_NAME, "WARNING") as logs:
                started = time.perf_counter()
                logger = MetricsLogger(self.exp_dir, redis_url=url)
                for step in range(200):
                    logger.log_metrics({"loss": 1.0}, step)
                logging_time = time.perf_counter() - started
                started = time.perf_counter()
                logger.finalize()
                finalize_time = time.perf_counter() - started
        self.assertLess(logging_time, 0.5)
        self.assertLess(finalize_time, 2.5)  # the drain deadline bounds the wait on a hung server
        self.assertEqual(len(outage_lines(logs)), 1, logs.output)
        self.assertEqual(len(read_jsonl(self.exp_dir / "dashboard_metrics" / "metrics.jsonl")), 200)


if __name__ == "__main__":
    unittest.main()
