"""The MCP server's lazy disk cache (dashboard/mcp/cache.py, ADR 0013).

Unit tests pin the rules on a counting fetcher (what is learned from which answer shape, the key, collisions,
corrupt files, failed writes); the rest go through MCP tool calls to a real dashboard and count the HTTP requests
that actually leave the process with an httpx event hook."""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import unittest
from pathlib import Path

import anyio

from core.manifest import load_manifest
from core.testing import slow
from dashboard.mcp import DiskCache, TidalAPI, TidalAPIError, build_server
from dashboard.mcp.budget import round_floats
from dashboard.mcp.cache import cache_key
from tests.support import (
    DashboardServer,
    EmbeddedRedis,
    TempDirTestCase,
    dashboard_settings,
    mcp_call,
    mcp_text,
    write_tiny_experiment,
)

KEYS = load_manifest().redis
DONE = "20260101-120000-commit_nogit-config_0123456789"
RUNNING = "20260102-120000-commit_nogit-config_0123456789"
BASE = "http://dashboard.test"
METRICS = f"/api/experiments/{DONE}/metrics"


class FakeAPI:
    """A fetcher standing in for the network: answers from `answers` (path -> body) and records every request."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.requests: list[tuple[str, dict]] = []

    async def __call__(self, path: str, params: dict):
        self.requests.append((path, params))
        answer = self.answers[path]
        if isinstance(answer, Exception):
            raise answer
        return answer


def get(cache: DiskCache, fetch: FakeAPI, path: str, **params):
    return anyio.run(lambda: cache.get(BASE, path, params, fetch))


class CacheRulesTest(TempDirTestCase):
    def setUp(self):
        super().setUp()
        self.cache = DiskCache(self.tmp / "cache")
        self.fetch = FakeAPI({
            "/api/experiments": {"experiments": [{"id": DONE, "status": "completed"},
                                                 {"id": RUNNING, "status": "training"}]},
            f"/api/experiments/{DONE}/status": {"experimentId": DONE, "status": {"status": "completed"}},
            f"/api/experiments/{RUNNING}/status": {"experimentId": RUNNING, "status": {"status": "training"}},
            METRICS: {"points": [1, 2, 3]},
            f"/api/experiments/{RUNNING}/metrics": {"points": [1]},
            "/api/jobs": {"jobs": []},
        })

    def files(self) -> list[Path]:
        return sorted(self.cache.directory.rglob("*.json"))

    def test_completion_is_learned_from_the_list_shape(self):
        get(self.cache, self.fetch, "/api/experiments")
        self.assertEqual(self.cache.completed, {DONE: True, RUNNING: False})
        for _ in range(3):
            self.assertEqual(get(self.cache, self.fetch, METRICS, maxPoints=200), {"points": [1, 2, 3]})
        self.assertEqual([p for p, _ in self.fetch.requests], ["/api/experiments", METRICS])
        self.assertEqual((self.cache.hits, self.cache.misses, self.cache.writes), (2, 1, 1))

    def test_completion_is_learned_from_the_status_shapes(self):
        for body in ({"experimentId": DONE, "status": {"status": "completed", "timestamp": 1.0}},
                     {"experimentId": DONE, "status": "completed"}):
            cache = DiskCache(self.tmp / "other")
            cache.observe(f"/api/experiments/{DONE}/status", body)
            self.assertEqual(cache.completed, {DONE: True}, body)
        cache.observe(f"/api/experiments/{DONE}/status", {"experimentId": DONE, "status": None})
        self.assertEqual(cache.completed, {DONE: False})

    def test_an_unknown_experiment_is_settled_by_one_status_request(self):
        get(self.cache, self.fetch, METRICS)
        self.assertEqual([p for p, _ in self.fetch.requests], [f"/api/experiments/{DONE}/status", METRICS])
        fresh = DiskCache(self.cache.directory)                 # a new process over the same directory
        fetch = FakeAPI(self.fetch.answers)
        self.assertEqual(get(fresh, fetch, METRICS), {"points": [1, 2, 3]})
        self.assertEqual([p for p, _ in fetch.requests], [f"/api/experiments/{DONE}/status"])
        self.assertEqual(fresh.hits, 1)

    def test_running_experiments_lists_jobs_and_status_are_never_stored(self):
        get(self.cache, self.fetch, "/api/experiments")
        for path in (f"/api/experiments/{RUNNING}/metrics", "/api/experiments", "/api/jobs",
                     f"/api/experiments/{DONE}/status"):
            get(self.cache, self.fetch, path)
            get(self.cache, self.fetch, path)
        self.assertEqual(self.files(), [])
        self.assertEqual(len(self.fetch.requests), 1 + 2 * 4)

    def test_nothing_yet_answers_are_not_stored(self):
        get(self.cache, self.fetch, "/api/experiments")
        evaluation = f"/api/experiments/{DONE}/evaluation"
        self.fetch.answers[evaluation] = {"experimentId": DONE, "results": None}
        get(self.cache, self.fetch, evaluation)
        self.assertEqual(self.files(), [])
        self.fetch.answers[evaluation] = {"experimentId": DONE, "results": {"perplexity": 12.5}}  # evaluated later
        self.assertEqual(get(self.cache, self.fetch, evaluation)["results"], {"perplexity": 12.5})
        self.assertEqual(get(self.cache, self.fetch, evaluation)["results"], {"perplexity": 12.5})
        self.assertEqual(self.cache.hits, 1)

    def test_errors_are_not_stored(self):
        get(self.cache, self.fetch, "/api/experiments")
        self.fetch.answers[METRICS] = TidalAPIError("invalid request", 422)
        for _ in range(2):
            with self.assertRaises(TidalAPIError):
                get(self.cache, self.fetch, METRICS, maxPoints=5)
        self.assertEqual(self.files(), [])

    def test_an_experiment_seen_running_again_loses_its_files(self):
        get(self.cache, self.fetch, "/api/experiments")
        get(self.cache, self.fetch, METRICS)
        self.assertEqual(len(self.files()), 1)
        self.fetch.answers["/api/experiments"] = {"experiments": [{"id": DONE, "status": "training"}]}  # resumed
        get(self.cache, self.fetch, "/api/experiments")
        self.assertEqual(self.files(), [])
        get(self.cache, self.fetch, METRICS)
        self.assertEqual(self.fetch.requests[-1][0], METRICS)
        self.assertEqual(self.files(), [])

    def test_the_key_is_path_and_sorted_query(self):
        self.assertEqual(cache_key(BASE, METRICS, {"mode": "recent", "maxPoints": 20, "keys": None}),
                         cache_key(BASE + "/", METRICS, {"maxPoints": 20, "mode": "recent"}))
        self.assertNotEqual(cache_key(BASE, METRICS, {"maxPoints": 20}), cache_key(BASE, METRICS, {"maxPoints": 21}))
        get(self.cache, self.fetch, "/api/experiments")
        get(self.cache, self.fetch, METRICS, mode="recent", maxPoints=20)
        get(self.cache, self.fetch, METRICS, maxPoints=20, mode="recent")
        self.assertEqual(self.cache.hits, 1)
        stored = json.loads(self.files()[0].read_text())
        self.assertEqual(stored["key"], f"{BASE}{METRICS}?maxPoints=20&mode=recent")
        self.assertEqual(self.files()[0].name, hashlib.sha256(stored["key"].encode()).hexdigest() + ".json")

    def test_a_corrupt_file_is_a_miss_and_is_rewritten(self):
        get(self.cache, self.fetch, "/api/experiments")
        get(self.cache, self.fetch, METRICS)
        [file] = self.files()
        file.write_text('{"key": "torn')
        self.assertEqual(get(self.cache, self.fetch, METRICS), {"points": [1, 2, 3]})
        self.assertEqual(self.fetch.requests[-1][0], METRICS)
        self.assertEqual(json.loads(file.read_text())["body"], {"points": [1, 2, 3]})
        get(self.cache, self.fetch, METRICS)
        self.assertEqual(self.cache.hits, 1)

    def test_a_file_holding_another_key_is_a_miss(self):
        get(self.cache, self.fetch, "/api/experiments")
        get(self.cache, self.fetch, METRICS)
        [file] = self.files()
        file.write_text(json.dumps({"key": f"{BASE}/api/experiments/other/metrics?", "body": {"points": ["wrong"]}}))
        self.assertEqual(get(self.cache, self.fetch, METRICS), {"points": [1, 2, 3]})
        self.assertEqual(json.loads(file.read_text())["key"], f"{BASE}{METRICS}?")

    def test_a_failed_write_passes_the_answer_through(self):
        blocker = self.tmp / "not-a-dir"
        blocker.write_text("a file where the cache directory should be")
        cache = DiskCache(blocker)
        get(cache, self.fetch, "/api/experiments")
        with self.assertLogs("tidal.mcp.cache", "WARNING"):
            self.assertEqual(get(cache, self.fetch, METRICS), {"points": [1, 2, 3]})
        self.assertEqual(get(cache, self.fetch, METRICS), {"points": [1, 2, 3]})  # warned once, still answering
        self.assertEqual((cache.writes, cache.hits), (0, 0))


class CacheThroughDashboardTest(TempDirTestCase):
    """MCP tools -> TidalAPI -> DiskCache -> a real dashboard on a real Redis with real tiny experiments."""

    @classmethod
    def setUpClass(cls):
        cls._dir = tempfile.TemporaryDirectory(prefix="tidal-mcp-cache-")
        cls.root = Path(cls._dir.name) / "experiments"
        write_tiny_experiment(cls.root, DONE, steps=2000, status="completed")
        write_tiny_experiment(cls.root, RUNNING, steps=20, status="training")
        cls.redis = EmbeddedRedis().start()
        cls.server = DashboardServer(dashboard_settings(cls.root, cls.redis.url)).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        cls.redis.stop()
        cls._dir.cleanup()

    def setUp(self):
        super().setUp()
        import redis

        self.redis_client = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.redis_client.flushall()
        self.addCleanup(self.redis_client.close)
        self.requests: list[str] = []
        self.cache = DiskCache(self.tmp / "cache")
        self.mcp = self.build(self.server.url)

    def build(self, url: str):
        async def count(request):
            self.requests.append(request.url.path)

        return build_server(TidalAPI(url, None, cache=self.cache, event_hooks={"request": [count]}))

    def call(self, tool: str, mcp=None, **arguments):
        result = mcp_call(mcp or self.mcp, tool, arguments)
        self.assertFalse(result.is_error, mcp_text(result))
        return result.structured_content

    def test_a_completed_experiment_is_answered_from_disk_with_zero_requests(self):
        self.call("list_experiments")
        first = self.call("get_metrics", experiment_id=DONE, max_points=100)
        before = len(self.requests)
        for _ in range(3):
            self.assertEqual(self.call("get_metrics", experiment_id=DONE, max_points=100), first)
        self.assertEqual(len(self.requests), before)                            # zero network calls
        self.assertEqual(self.cache.hits, 3)
        self.call("get_metrics", experiment_id=DONE, max_points=50)             # another query: another entry
        self.assertEqual(self.requests[-1], f"/api/experiments/{DONE}/metrics")
        self.call("get_checkpoints", experiment_id=DONE)
        self.call("get_checkpoints", experiment_id=DONE)
        self.assertEqual(self.cache.writes, 3)

    @slow
    def test_the_cached_answer_survives_the_dashboard_going_away(self):
        redis_server = EmbeddedRedis().start()
        self.addCleanup(redis_server.stop)
        server = DashboardServer(dashboard_settings(self.root, redis_server.url)).start()
        self.addCleanup(server.stop)
        mcp = self.build(server.url)
        self.call("get_status", mcp=mcp, experiment_id=DONE)
        first = self.call("get_metrics", mcp=mcp, experiment_id=DONE, keys=["Losses/Total"])
        server.stop()
        self.assertEqual(self.call("get_metrics", mcp=mcp, experiment_id=DONE, keys=["Losses/Total"]), first)
        result = mcp_call(mcp, "list_experiments", {})                         # lists are never cached
        self.assertIn(f"the Tidal dashboard at {server.url} is not reachable", mcp_text(result))

    def test_a_running_experiment_is_not_cached_until_it_completes(self):
        self.call("list_experiments")
        for _ in range(2):
            self.call("get_metrics", experiment_id=RUNNING)
        self.assertEqual(self.requests.count(f"/api/experiments/{RUNNING}/metrics"), 2)
        self.assertEqual(list(self.cache.directory.rglob("*.json")), [])
        # newer than the "training" record on disk: the newer status wins
        self.redis_client.set(KEYS.status(RUNNING), json.dumps({"status": "completed", "timestamp": time.time()}))
        self.assertEqual(self.call("get_status", experiment_id=RUNNING)["status"]["status"], "completed")
        self.call("get_metrics", experiment_id=RUNNING)
        self.call("get_metrics", experiment_id=RUNNING)
        self.assertEqual(self.requests.count(f"/api/experiments/{RUNNING}/metrics"), 3)
        self.assertEqual(self.cache.hits, 1)

    def test_a_corrupt_file_is_refetched_and_rewritten(self):
        self.call("list_experiments")
        first = self.call("get_metrics", experiment_id=DONE, max_points=10)
        [file] = self.cache.directory.rglob("*.json")
        file.write_bytes(b"\x00garbage")
        self.assertEqual(self.call("get_metrics", experiment_id=DONE, max_points=10), first)
        self.assertEqual(self.requests[-1], f"/api/experiments/{DONE}/metrics")
        self.assertEqual(round_floats(json.loads(file.read_text())["body"]), first)  # the tool rounds what it answers

    def test_tool_errors_are_not_cached(self):
        self.call("list_experiments")
        for _ in range(2):
            result = mcp_call(self.mcp, "get_config", {"filename": "missing.yaml"})
            self.assertTrue(result.is_error)
        missing = "20990101-000000-commit_nogit-config_ffffffffff"
        for _ in range(2):
            self.assertTrue(mcp_call(self.mcp, "get_metrics", {"experiment_id": missing}).is_error)
        self.assertEqual(self.requests.count(f"/api/experiments/{missing}/status"), 2)
        self.assertEqual(list(self.cache.directory.rglob("*.json")), [])


if __name__ == "__main__":
    unittest.main()
