"""Fault injection across components: LM training keeps going and keeps every record when Redis disappears
mid-run and comes back (ADR 0006: Redis is optional, disk is the record, the live feed resumes); a job survives its
dashboard being killed and restarted (ADR 0007: the worker is independent of the server process)."""
import json
import re
import time

import httpx
import torch
import yaml

from core.io import read_jsonl
from core.testing import slow
from MetricsLogger import MetricsLogger, RedisKeys
from plugins.tidal.Trainer import Trainer
from tests.support import (
    DashboardProcess,
    RedisTestCase,
    SSEClient,
    TempDirTestCase,
    auth_headers,
    kill_job_processes,
    pid_alive,
    tiny_config,
    wait_for,
)


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


@slow
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


class DashboardCrashDuringJob:
    """The dashboard process is SIGKILLed while a tiny LM job runs, then started again on the same port. The worker
    runs in a session of its own and keeps writing to Redis, so the job record and its logs are intact, the job
    finishes, and a stream client resumes from its Last-Event-ID on the new process without a gap or a duplicate.
    Subclasses choose the Redis: a shared one (REDIS_URL) or the dashboard's own embedded one."""

    STEPS = 60  # about 10 s of training on 2 cores: the restart happens while the job runs

    redis_url: str | None = None

    def test_job_record_logs_and_stream_survive_a_killed_dashboard(self):
        configs = self.tmp / "configs"
        configs.mkdir()
        config = tiny_config(DATA_CACHE_DIR=str(self.tmp / "cache"), EVAL_INTERVAL=10_000, LOG_INTERVAL=1,
                             EVAL_MAX_NEW_TOKENS=4)
        (configs / "tiny.yaml").write_text(yaml.safe_dump(config))
        experiments = self.tmp / "experiments"
        first = DashboardProcess(experiments, self.redis_url, env={"EXTRA_CONFIG_DIRS": str(configs)},
                                 log_level="warning").start()
        self.addCleanup(first.close)
        http = httpx.Client(base_url=first.url, timeout=10)
        self.addCleanup(http.close)
        r = http.post("/api/jobs", json={"type": "lm-training", "configPath": str(configs / "tiny.yaml"),
                                         "maxSteps": self.STEPS}, headers=auth_headers())
        self.assertEqual(r.status_code, 201, r.text)
        job_id = r.json()["job"]["jobId"]

        def job():
            return http.get(f"/api/jobs/{job_id}").json()["job"]

        self.last_job = {}
        self.addCleanup(lambda: kill_job_processes([self.last_job]))
        self.last_job = wait_for(lambda: (j := job())["status"] == "running" and j.get("experimentId") and j, 60,
                                 message="the job running")
        exp_id = self.last_job["experimentId"]
        wait_for(lambda: http.get(f"/api/experiments/{exp_id}/status").status_code == 200, 60,
                 message="the experiment on disk")
        before = SSEClient(f"{first.url}/api/experiments/{exp_id}/stream?lastEventId=0-0")
        self.addCleanup(before.close)
        seen = before.until(lambda e: e.get("event") == "metrics" and json.loads(e["data"])["step"] >= 3, 60)
        logs_before = http.get(f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["lines"]

        self.before_crash()
        first.kill()
        self.assertTrue(before.ended(10), "the stream ended with the server")
        while (event := before.events.get_nowait()) is not None:  # what arrived before the connection dropped
            seen.append(event)
        worker, trainer = self.last_job["workerPid"], self.last_job["childPid"]
        self.assertTrue(pid_alive(worker) and pid_alive(trainer), "the worker and its trainer outlived the dashboard")

        second = DashboardProcess(experiments, self.redis_url, port=first.port,
                                  env={"EXTRA_CONFIG_DIRS": str(configs)}, log_level="warning").start()
        self.addCleanup(second.close)
        self.after_restart()
        still_running = job()["status"] == "running"  # (asked of the new process: same port)
        last_id = [e["id"] for e in seen if "id" in e][-1]
        after = SSEClient(f"{second.url}/api/experiments/{exp_id}/stream", headers={"Last-Event-ID": last_id})
        self.addCleanup(after.close)
        seen += after.until(lambda e: e.get("event") == "status"
                            and json.loads(e["data"])["status"] in ("completed", "failed", "stopped"), 120)
        final = wait_for(lambda: (j := job())["status"] in ("completed", "failed", "cancelled") and j, 60,
                         message="the job finished")
        logs = http.get(f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["lines"]
        self.assertEqual((final["status"], final["exitCode"], final["experimentId"]), ("completed", 0, exp_id),
                         "\n".join(line["line"] for line in logs[-20:]))
        self.assertTrue(still_running, "the restart happened while the job ran (make STEPS larger if not)")
        self.assertEqual(logs[:len(logs_before)], logs_before, "the lines logged before the crash are intact")
        step_lines = [int(m.group(1)) for line in logs if (m := re.search(rf"step (\d+)/{self.STEPS} \|",
                                                                           line["line"]))]
        stride = self.STEPS // 20  # without a terminal the trainer logs a progress line every 1/20 of the run
        self.assertEqual(step_lines, list(range(stride, self.STEPS + 1, stride)), "every progress line, once")
        ids = [e["id"] for e in seen if "id" in e]
        self.assertEqual(len(ids), len(set(ids)), "no event twice")
        streamed = [json.loads(e["data"])["step"] for e in seen if e.get("event") == "metrics"
                    and "Losses/Total" in json.loads(e["data"])]
        self.assertEqual(streamed, list(range(1, self.STEPS + 1)), "every step streamed once, in order")
        on_disk = [r["step"] for r in read_jsonl(experiments / exp_id / "dashboard_metrics" / "metrics.jsonl")
                   if "Losses/Total" in r]
        self.assertEqual(on_disk, list(range(1, self.STEPS + 1)))

    def before_crash(self):
        pass

    def after_restart(self):
        pass


@slow
class DashboardCrashSharedRedisTest(DashboardCrashDuringJob, RedisTestCase):
    def setUp(self):
        super().setUp()
        self.redis_url = self.redis_server.url


@slow
class DashboardCrashEmbeddedRedisTest(DashboardCrashDuringJob, TempDirTestCase):
    """REDIS_URL unset: the dashboard's embedded Redis (persisted under <experiments>/.redis, in a session of its own)
    outlives the killed dashboard and keeps the worker's writes; the restarted dashboard must use that same Redis, not
    start a second one on another port over the same files (which would never see the job finish)."""

    def setUp(self):
        super().setUp()
        self.port_file = self.tmp / "experiments" / ".redis" / "port"
        self.redis_ports = set()
        self.addCleanup(self._stop_embedded_redis)

    def before_crash(self):
        self.redis_ports.add(int(self.port_file.read_text()))

    def after_restart(self):
        self.redis_ports.add(int(self.port_file.read_text()))
        self.assertEqual(len(self.redis_ports), 1, "the restarted dashboard reattached to its embedded Redis")

    def _stop_embedded_redis(self):
        """An embedded Redis left by a SIGKILLed dashboard is ours to stop: shut it down by its port."""
        import redis

        for port in self.redis_ports:
            try:
                redis.Redis(port=port, socket_timeout=2).shutdown(nosave=True)
            except (redis.RedisError, OSError):
                pass
