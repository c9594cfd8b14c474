"""Fault injection across components: LM training keeps going and keeps every record when Redis disappears
mid-run and comes back (SPEC §8: Redis is optional, disk is the record, the live feed resumes)."""
import json
import time

import torch

from MetricsLogger import MetricsLogger, RedisKeys, read_jsonl
from plugins.tidal.Trainer import Trainer
from tests.support import RedisTestCase, tiny_config, wait_for


class RedisOutage(MetricsLogger):
    """The real MetricsLogger; the test's Redis server is stopped after one step and restarted after another."""

    def __init__(self, exp_dir, redis_url, server, stop_at, start_at):
        super().__init__(exp_dir, redis_url=redis_url)
        self.server, self.stop_at, self.start_at = server, stop_at, start_at
        self.step_seconds = []
        self._last = time.perf_counter()

    def log_metrics(self, metrics, step):
        super().log_metrics(metrics, step)
        if "Losses/Total" not in metrics:
            return
        now = time.perf_counter()
        self.step_seconds.append(now - self._last)
        self._last = now
        if step == self.stop_at:
            self.server.stop()
        if step == self.start_at:
            self.server.start()


class TestRedisOutageDuringTraining(RedisTestCase):
    def test_training_continues_disk_keeps_every_step_and_the_live_feed_resumes(self):
        exp = self.tmp / "exp"
        exp.mkdir()
        config = tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), EVAL_INTERVAL=100)
        logger = RedisOutage(exp, self.redis_url, self.redis_server, stop_at=3, start_at=12)
        final = Trainer(config, exp, torch.device("cpu"), logger, max_steps=30).run()
        self.assertTrue(final.is_file(), "training finished despite the outage")
        steps = [r["step"] for r in read_jsonl(exp / "dashboard_metrics" / "metrics.jsonl") if "Losses/Total" in r]
        self.assertEqual(steps, list(range(1, 31)), "disk has every step, in order, once")
        # Logging never blocked the loop while Redis was gone (connection timeouts are short and off-thread).
        outage = logger.step_seconds[3:12]
        self.assertLess(max(outage), 5.0)
        logger.finalize("completed")
        keys = RedisKeys.for_experiment(exp.name)
        wait_for(lambda: (json.loads(self.redis.get(keys.status) or "{}").get("status") == "completed"), timeout=15,
                 message="the final status in Redis after the restart")
        live_steps = [json.loads(fields["data"]).get("step") for _, fields in self.redis.xrange(keys.stream)
                      if fields["kind"] == "metrics"]
        # This Redis restarts empty (no persistence): what matters is that the live feed resumed after it returned.
        self.assertTrue(any(s is not None and s > 12 for s in live_steps), f"no step after the restart: {live_steps}")
        self.assertIn(exp.name, self.redis.smembers("tidal:experiments"))
