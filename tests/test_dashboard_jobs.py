"""Jobs: the state machine, the atomic store, the job API (concurrency, idempotency, signals, cancel, restart)
and the health monitor, against a real Redis and a real uvicorn."""
from __future__ import annotations

import asyncio
import itertools
import json
import time
import unittest

import httpx
import redis.asyncio as aioredis

from core import jobs as jobs_core
from core.manifest import load_manifest
from core.testing import slow
from dashboard.server.errors import Conflict, NotFound
from dashboard.server.services.health_monitor import HealthMonitor
from dashboard.server.services.job_store import JobStore
from dashboard.server.services.providers import make_providers
from tests.support import DashboardServer, RedisTestCase, auth_headers, dashboard_settings, wait_for

KEYS = load_manifest().redis


def new_job(job_id: str = "job-1", type_: str = "lm-training", status: str = "pending") -> dict:
    now = time.time()
    return {"jobId": job_id, "type": type_, "status": status, "provider": "remote",
            "config": {"configPath": "plugins/tidal/configs/base_config.yaml"}, "experimentId": None,
            "createdAt": now, "updatedAt": now, "startedAt": None, "completedAt": None, "error": None,
            "exitCode": None}


class StateMachineTest(unittest.TestCase):
    def test_lifecycle_and_terminal_states(self):
        path = ["pending", "provisioning", "starting", "running", "completed"]
        for a, b in itertools.pairwise(path):
            self.assertIn(a, jobs_core.sources_of(b), f"{a} -> {b}")
        for terminal in jobs_core.TERMINAL:
            self.assertEqual(jobs_core.TRANSITIONS[terminal], frozenset())
        self.assertIn("running", jobs_core.sources_of("completing"))
        self.assertIn("completing", jobs_core.sources_of("stopping"))
        self.assertIn("stopping", jobs_core.sources_of("cancelled"))

    def test_illegal_transitions(self):
        for a, b in [("pending", "running"), ("completed", "running"), ("failed", "cancelled"),
                     ("stopping", "completing"), ("provisioning", "completing"), ("running", "pending")]:
            self.assertNotIn(a, jobs_core.sources_of(b), f"{a} -> {b}")

    def test_every_state_is_reachable_and_every_active_state_can_end(self):
        reachable, frontier = {"pending"}, ["pending"]
        while frontier:
            for nxt in jobs_core.TRANSITIONS[frontier.pop()]:
                if nxt not in reachable:
                    reachable.add(nxt)
                    frontier.append(nxt)
        self.assertEqual(reachable, set(jobs_core.STATUSES))
        for status in set(jobs_core.STATUSES) - jobs_core.TERMINAL:
            self.assertIn("failed", jobs_core.TRANSITIONS[status])
            self.assertIn("cancelled", jobs_core.TRANSITIONS[status])


class JobStoreTest(RedisTestCase):
    def run_async(self, coro_fn):
        async def runner():
            client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
            try:
                return await coro_fn(JobStore(client, KEYS))
            finally:
                await client.aclose()
        return asyncio.run(runner())

    def test_transitions_are_validated_persisted_streamed_and_published(self):
        pubsub = self.redis.pubsub()
        pubsub.subscribe(KEYS.updatesChannel)
        wait_for(lambda: pubsub.get_message(timeout=0.1), message="subscribe confirmation")

        async def scenario(store):
            await store.create(new_job(), 1)
            for status in ("provisioning", "starting", "running"):
                job = await store.transition("job-1", status)
                self.assertEqual(job["status"], status)
            self.assertIsNotNone(job["startedAt"])
            with self.assertRaises(Conflict):
                await store.transition("job-1", "provisioning")
            with self.assertRaises(Conflict):  # already running
                await store.transition("job-1", "running")
            self.assertTrue((await store.try_transition("job-1", "running")).ok)  # 'same' is not an error
            job = await store.transition("job-1", "completed", {"exitCode": 0})
            self.assertIsNotNone(job["completedAt"])
            with self.assertRaises(Conflict):
                await store.transition("job-1", "failed")
            with self.assertRaises(Conflict):  # a finished job's fields are frozen too
                await store.transition("job-1", None, {"experimentId": "x"})
            with self.assertRaises(NotFound):
                await store.transition("job-404", "running")
            return await store.list_active()

        self.assertEqual(self.run_async(scenario), [])
        stored = json.loads(self.redis.hget(KEYS.jobsHash, "job-1"))
        self.assertEqual((stored["status"], stored["exitCode"]), ("completed", 0))
        self.assertFalse(self.redis.sismember(KEYS.jobsActiveSet, "job-1"))
        entries = self.redis.xrange(KEYS.jobsStream)
        self.assertEqual([json.loads(f["data"])["status"] for _, f in entries],
                         ["pending", "provisioning", "starting", "running", "completed"])
        published = []
        wait_for(lambda: (m := pubsub.get_message(timeout=0.1)) and published.append(m) or len(published) >= 5,
                 message="5 published updates")
        self.assertEqual(json.loads(published[-1]["data"])["status"], "completed")
        pubsub.close()

    def test_concurrency_per_type(self):
        async def scenario(store):
            self.assertEqual((await store.create(new_job("a"), 1))[0], "created")
            outcome, blocking = await store.create(new_job("b"), 1)
            self.assertEqual((outcome, blocking), ("busy", "a"))
            self.assertEqual((await store.create(new_job("c", "rl-training"), 1))[0], "created")
            await store.transition("a", "failed")
            self.assertEqual((await store.create(new_job("b"), 1))[0], "created")
            self.assertEqual((await store.create(new_job("d"), 2))[0], "created")  # a limit of 2 admits a second
        self.run_async(scenario)

    def test_idempotency_key(self):
        async def scenario(store):
            self.assertEqual((await store.create(new_job("a"), 1, "key-1", "fp"))[0], "created")
            outcome, job = await store.create(new_job("b"), 1, "key-1", "fp")
            self.assertEqual((outcome, job["jobId"]), ("existing", "a"))
            outcome, job = await store.create(new_job("c"), 1, "key-1", "other")
            self.assertEqual((outcome, job["jobId"]), ("idempotency-mismatch", "a"))
        self.run_async(scenario)
        self.assertEqual(self.redis.hlen(KEYS.jobsHash), 1)
        self.assertGreater(self.redis.ttl(KEYS.idempotencyPrefix + "key-1"), 3600)


@slow
class JobsApiTest(RedisTestCase):
    def setUp(self):
        super().setUp()
        self.server = DashboardServer(dashboard_settings(self.tmp / "experiments", self.redis_url)).start()
        self.addCleanup(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        self.addCleanup(self.http.close)

    def create(self, expect=201, headers=None, **body):
        body = {"type": "lm-training", "configPath": "configs/base_config.yaml", "provider": "remote", **body}
        r = self.http.post("/api/jobs", json=body, headers=auth_headers(**(headers or {})))
        self.assertEqual(r.status_code, expect, r.text)
        return r.json()

    def worker_status(self, job_id, status, expect=200, **fields):
        r = self.http.patch(f"/api/workers/{job_id}/status", json={"status": status, **fields},
                            headers=auth_headers())
        self.assertEqual(r.status_code, expect, r.text)
        return r.json()

    def test_create_list_get(self):
        job = self.create()["job"]
        self.assertEqual(job["status"], "provisioning")  # remote: waits for a worker to attach
        self.assertEqual(job["config"]["configPath"], "plugins/tidal/configs/base_config.yaml")
        self.assertTrue(job["jobId"].startswith("job-"))
        listed = self.http.get("/api/jobs").json()["jobs"]
        self.assertEqual([j["jobId"] for j in listed], [job["jobId"]])
        self.assertEqual(self.http.get("/api/jobs/active").json()["jobs"][0]["jobId"], job["jobId"])
        self.assertEqual(self.http.get(f"/api/jobs/{job['jobId']}").json()["job"]["type"], "lm-training")
        r = self.http.get("/api/jobs/job-doesnotexist")
        self.assertEqual((r.status_code, r.json()["error"]), (404, "job not found: job-doesnotexist"))

    def test_config_overrides_with_an_unknown_key_are_refused_naming_the_closest_key(self):
        for overrides, field, hint in (({"NOT_A_KEY": 3}, "body.overrides.NOT_A_KEY", "did you mean"),
                                       ({"BATCH_SIZ": 8}, "body.overrides.BATCH_SIZ", "did you mean BATCH_SIZE?"),
                                       ({"LEARNING_RATE_SCHEDULER.BASE_RL": 1e-3},
                                        "body.overrides.LEARNING_RATE_SCHEDULER.BASE_RL",
                                        "did you mean LEARNING_RATE_SCHEDULER.BASE_LR?"),
                                       ({"BATCH_SIZE": "eight"}, "body.overrides.BATCH_SIZE", "integer")):
            with self.subTest(overrides=overrides):
                (problem,) = self.create(expect=422, overrides=overrides)["detail"]
                self.assertEqual(problem["field"], field)
                self.assertIn(hint, problem["message"])
        self.assertEqual(self.http.get("/api/jobs").json()["jobs"], [])
        job = self.create(overrides={"BATCH_SIZE": 16, "LEARNING_RATE_SCHEDULER.BASE_LR": 3e-4})["job"]
        self.assertEqual(job["config"]["overrides"], {"BATCH_SIZE": 16, "LEARNING_RATE_SCHEDULER.BASE_LR": 3e-4})
        r = self.http.post("/api/jobs", headers=auth_headers(), json={
            "type": "rl-training", "configPath": "configs/base_config.yaml", "rlConfigPath": "configs/rl_config.yaml",
            "checkpoint": "experiments/x/y.pth", "overrides": {"RL_SEED": 1}, "provider": "remote"})
        self.assertEqual(r.status_code, 422, r.text)  # RL jobs take no overrides (yet): said, not ignored

    def test_config_overrides_outside_the_typed_config_rules_are_refused_before_the_job_runs(self):
        # the value rules of LMConfig (ranges, choices, the heads dividing the width) hold at submission too, so a
        # bad value is a 422 naming the key, not a job that fails minutes later in the trainer
        for overrides, field, hint in (
                ({"BATCH_SIZE": 0}, "body.overrides.BATCH_SIZE", "BATCH_SIZE must be positive, got 0"),
                ({"LEARNING_RATE_SCHEDULER.BASE_LR": -1.0}, "body.overrides.LEARNING_RATE_SCHEDULER.BASE_LR",
                 "BASE_LR must be >= 0"),
                ({"AMP_DTYPE": "fp8"}, "body.overrides.AMP_DTYPE", "AMP_DTYPE must be one of"),
                ({"EMBED_DIM": 96, "NUM_ATTENTION_HEADS": 64}, "body.overrides", "must be divisible by")):
            with self.subTest(overrides=overrides):
                (problem,) = self.create(expect=422, overrides=overrides)["detail"]
                self.assertEqual(problem["field"], field)
                self.assertIn(hint, problem["message"])
                self.assertNotIn("/", problem["message"])  # no server path in the message
        self.assertEqual(self.http.get("/api/jobs").json()["jobs"], [])

    def test_concurrency_conflict_is_409_and_other_types_are_independent(self):
        first = self.create()["job"]
        body = self.create(expect=409)
        self.assertEqual(body["detail"]["activeJobId"], first["jobId"])
        self.http.post(f"/api/jobs/{first['jobId']}/cancel", headers=auth_headers())
        self.create()

    def test_idempotency_key_returns_the_same_job(self):
        a = self.create(headers={"Idempotency-Key": "abc-123"})["job"]
        r = self.http.post("/api/jobs", json={"type": "lm-training", "configPath": "configs/base_config.yaml",
                                              "provider": "remote"},
                           headers=auth_headers(**{"Idempotency-Key": "abc-123"}))
        self.assertEqual((r.status_code, r.json()["job"]["jobId"]), (200, a["jobId"]))
        body = self.create(expect=409, headers={"Idempotency-Key": "abc-123"}, configPath="configs/rl_config.yaml")
        self.assertIn("different request", body["error"])
        self.assertEqual(len(self.http.get("/api/jobs").json()["jobs"]), 1)
        self.create(expect=400, headers={"Idempotency-Key": "x" * 201})

    def test_signals_follow_the_state_machine(self):
        job_id = self.create()["job"]["jobId"]
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "complete"}, headers=auth_headers())
        self.assertEqual(r.status_code, 409)  # not running yet
        self.worker_status(job_id, "starting")
        self.worker_status(job_id, "running")
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "complete"}, headers=auth_headers())
        self.assertEqual((r.status_code, r.json()["job"]["status"]), (200, "completing"))
        self.assertEqual(self.http.get(f"/api/workers/{job_id}/signal", headers=auth_headers()).json(),
                         {"signal": "complete"})
        self.assertEqual(self.http.get(f"/api/workers/{job_id}/signal", headers=auth_headers()).json(),
                         {"signal": None})  # consumed once
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "stop"}, headers=auth_headers())
        self.assertEqual(r.json()["job"]["status"], "stopping")
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "pause"}, headers=auth_headers())
        self.assertEqual((r.status_code, r.json()["detail"][0]["field"]), (422, "body.signal"))
        self.worker_status(job_id, "cancelled", exitCode=143, error="stopped by user")
        self.worker_status(job_id, "running", expect=409)
        job = self.http.get(f"/api/jobs/{job_id}").json()["job"]
        self.assertEqual((job["status"], job["exitCode"]), ("cancelled", 143))
        self.assertEqual(self.http.get("/api/jobs/active").json()["jobs"], [])

    def test_cancel(self):
        job_id = self.create()["job"]["jobId"]
        r = self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        self.assertEqual((r.status_code, r.json()["job"]["status"]), (200, "cancelled"))
        self.assertEqual(self.redis.get(KEYS.signal(job_id)), "stop")  # a live worker would stop its trainer
        r = self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        self.assertEqual(r.status_code, 409)
        self.assertEqual(self.http.post("/api/jobs/job-none/cancel", headers=auth_headers()).status_code, 404)

    def test_logs_pagination(self):
        job_id = self.create()["job"]["jobId"]
        lines = [{"timestamp": time.time(), "stream": "stdout", "line": f"line {i}"} for i in range(30)]
        r = self.http.post(f"/api/workers/{job_id}/logs", json={"lines": lines}, headers=auth_headers())
        self.assertEqual(r.json(), {"ok": True, "ingested": 30})
        body = self.http.get(f"/api/jobs/{job_id}/logs", params={"offset": 10, "limit": 5}).json()
        self.assertEqual(body["totalLines"], 30)
        self.assertEqual([line["line"] for line in body["lines"]], [f"line {i}" for i in range(10, 15)])
        self.assertEqual(self.http.get(f"/api/jobs/{job_id}/logs", params={"limit": 0}).status_code, 422)
        self.assertEqual(self.http.get("/api/jobs/job-none/logs").status_code, 404)

    def test_a_restarted_server_on_the_same_redis_loses_no_job(self):
        job_id = self.create()["job"]["jobId"]
        self.worker_status(job_id, "starting")
        self.server.stop()
        second = DashboardServer(dashboard_settings(self.tmp / "experiments", self.redis_url)).start()
        self.addCleanup(second.stop)
        with httpx.Client(base_url=second.url) as http:
            job = http.get(f"/api/jobs/{job_id}").json()["job"]
            self.assertEqual(job["status"], "starting")
            self.assertEqual([j["jobId"] for j in http.get("/api/jobs/active").json()["jobs"]], [job_id])
            r = http.post("/api/jobs", json={"type": "lm-training", "configPath": "configs/base_config.yaml"},
                          headers=auth_headers())
            self.assertEqual(r.status_code, 409)  # concurrency still enforced from the persisted record


class HealthMonitorTest(RedisTestCase):
    def monitor_run(self, scenario, **settings):
        settings = dashboard_settings(self.tmp, self.redis_url, **settings)

        async def runner():
            client = aioredis.Redis.from_url(self.redis_url, decode_responses=True)
            store = JobStore(client, KEYS)
            monitor = HealthMonitor(store, make_providers(settings), settings)
            try:
                return await scenario(store, monitor)
            finally:
                await client.aclose()
        return asyncio.run(runner())

    async def running_job(self, store, job_id="job-1", status="running"):
        await store.create(new_job(job_id), 5)
        for s in ("provisioning", "starting", "running"):
            await store.transition(job_id, s)
        if status != "running":
            await store.transition(job_id, status)

    def test_stop_ends_the_monitor_even_when_a_check_swallows_the_cancellation(self):
        # redis-py can turn a cancellation that lands inside a command into a connection error, which check_once
        # treats as "Redis down" and returns: the loop must still see that it was cancelled and end
        async def scenario(store, monitor):
            swallowed = []

            async def swallowing_check(now=None):
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    if swallowed:  # only the first one, so a failing run ends instead of hanging
                        raise
                    swallowed.append(True)
                return []
            monitor.check_once = swallowing_check
            monitor.start()
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await asyncio.wait_for(monitor.stop(), timeout=5)  # a second cancellation would end it (see above)
            self.assertLess(time.monotonic() - started, 1.0)
        self.monitor_run(scenario)

    def test_running_job_without_heartbeat_fails_after_the_timeout(self):
        async def scenario(store, monitor):
            await self.running_job(store)
            now = time.time()
            self.assertEqual(await monitor.check_once(now + 5), [])     # within 60 s
            await store.record_heartbeat("job-1", 120)
            self.assertEqual(await monitor.check_once(now + 59), [])
            self.assertEqual(await monitor.check_once(now + 61), ["job-1"])
            return await store.get("job-1")
        job = self.monitor_run(scenario, heartbeat_timeout=60.0)
        self.assertEqual((job["status"], job["error"]), ("failed", "worker heartbeat lost"))

    def test_a_stopping_job_whose_worker_vanished_is_cancelled(self):
        async def scenario(store, monitor):
            await self.running_job(store, status="stopping")
            self.assertEqual(await monitor.check_once(time.time() + 61), ["job-1"])
            return await store.get("job-1")
        self.assertEqual(self.monitor_run(scenario, heartbeat_timeout=60.0)["status"], "cancelled")

    def test_stuck_startup_fails(self):
        async def scenario(store, monitor):
            await store.create(new_job("job-1"), 5)
            await store.transition("job-1", "provisioning")
            now = time.time()
            self.assertEqual(await monitor.check_once(now + 10), [])
            self.assertEqual(await monitor.check_once(now + 31), ["job-1"])
            return await store.get("job-1")
        job = self.monitor_run(scenario, remote_startup_timeout=30.0)
        self.assertEqual(job["status"], "failed")
        self.assertIn("stuck in provisioning", job["error"])

    def test_no_job_is_failed_for_time_spent_in_a_redis_outage(self):
        async def scenario(store, monitor):
            start = time.time()
            self.redis_server.stop()
            self.assertEqual(await monitor.check_once(start + 30), [])
            self.assertIsNotNone(monitor.redis_down_since)
            self.redis_server.start()  # test Redis keeps no data: the running job is recorded again below
            await store.redis.connection_pool.disconnect()
            await self.running_job(store)
            back = start + 100  # the outage outlasted the timeout, but it was Redis that was gone, not the worker
            self.assertEqual(await monitor.check_once(back), [])
            self.assertIsNone(monitor.redis_down_since)
            self.assertEqual(await monitor.check_once(back + 59), [])
            self.assertEqual(await monitor.check_once(back + 61), ["job-1"])
        self.monitor_run(scenario, heartbeat_timeout=60.0)


if __name__ == "__main__":
    unittest.main()
