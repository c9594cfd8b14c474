"""Rate limiting of /api/generate and /api/analyze-trajectories: a Redis token bucket (5, one per 6 s) per client
IP, shared by every server process on that Redis, blind to forwarding headers unless a proxy is trusted, with
headers on every answer, and failing open fast when Redis is down."""
from __future__ import annotations

import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

import httpx

from core.testing import slow
from tests.support import DashboardProcess, DashboardServer, RedisTestCase, dashboard_settings, wait_for


class RateLimitTest(RedisTestCase):
    settings_overrides: dict = {}

    def setUp(self):
        super().setUp()
        settings = dashboard_settings(self.tmp, self.redis_url, **self.settings_overrides)
        self.server = DashboardServer(settings).start()
        self.addCleanup(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        self.addCleanup(self.http.close)

    def hit(self, path="/api/generate", headers=None):
        # a body that fails validation is cheap, but the limiter runs before validation: it still costs a token
        return self.http.post(path, json={"prompt": "x"}, headers=headers or {})


class TokenBucketTest(RateLimitTest):
    def test_exactly_five_of_ten_concurrent_calls_are_admitted(self):
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: self.hit(), range(10)))
        codes = sorted(r.status_code for r in responses)
        self.assertEqual(codes, [422] * 5 + [429] * 5)
        for r in responses:
            self.assertEqual(r.headers["x-ratelimit-limit"], "5")
            self.assertIn("x-ratelimit-remaining", r.headers)
        remaining = sorted(int(r.headers["x-ratelimit-remaining"]) for r in responses if r.status_code == 422)
        self.assertEqual(remaining, [0, 1, 2, 3, 4])
        refused = [r for r in responses if r.status_code == 429]
        for r in refused:
            self.assertEqual(r.headers["x-ratelimit-remaining"], "0")
            self.assertTrue(1 <= int(r.headers["retry-after"]) <= 6, r.headers["retry-after"])
            self.assertEqual(r.json()["error"][:19], "rate limit exceeded")

    def test_both_routes_share_the_bucket_and_other_routes_are_not_limited(self):
        for _ in range(3):
            self.hit("/api/generate")
        for _ in range(2):
            self.assertEqual(self.hit("/api/analyze-trajectories").status_code, 422)
        self.assertEqual(self.hit("/api/analyze-trajectories").status_code, 429)
        r = self.http.get("/api/health")
        self.assertEqual(r.status_code, 200)
        self.assertNotIn("x-ratelimit-limit", r.headers)

    def test_forwarded_for_is_ignored_without_a_trusted_proxy(self):
        for i in range(5):
            self.hit(headers={"X-Forwarded-For": f"10.0.0.{i}"})
        self.assertEqual(self.hit(headers={"X-Forwarded-For": "10.0.0.99"}).status_code, 429)


@slow
class TwoServerProcessesTest(RedisTestCase):
    """Two `python -m dashboard` processes (as deployed: uvicorn, no proxy trusted) share one Redis. Concurrent
    bursts from one client to both, each request claiming another client in every forwarding header, are admitted
    exactly to the bucket's capacity in total: the bucket lives in Redis (one atomic script), not in a process."""

    BURST = 24
    SPOOFED = ("X-Forwarded-For", "X-Real-IP", "Forwarded", "True-Client-IP", "CF-Connecting-IP")

    def test_the_bucket_is_shared_and_spoofed_headers_buy_nothing(self):
        servers = [DashboardProcess(self.tmp / "experiments", self.redis_url, log_level="warning").start()
                   for _ in range(2)]
        for server in servers:
            self.addCleanup(server.close)
        clients = [httpx.Client(base_url=s.url, timeout=30) for s in servers]
        for client in clients:
            self.addCleanup(client.close)
        barrier = threading.Barrier(self.BURST)

        def hit(i):
            spoofed = f"198.51.100.{i}"
            headers = {name: (f"for={spoofed}" if name == "Forwarded" else spoofed) for name in self.SPOOFED}
            barrier.wait()
            # admitted requests fail later on the missing checkpoint: no model is needed to count admissions
            return clients[i % 2].post("/api/generate", headers=headers,
                                       json={"checkpoint": "experiments/none/model.pth", "prompt": "x"})

        with ThreadPoolExecutor(self.BURST) as pool:
            responses = list(pool.map(hit, range(self.BURST)))
        admitted = [r for r in responses if r.status_code != 429]
        self.assertEqual(len(admitted), 5, sorted(r.status_code for r in responses))
        self.assertEqual({r.status_code for r in admitted}, {400})
        for r in responses:
            self.assertEqual(r.headers["x-ratelimit-limit"], "5")
            if r.status_code == 429:
                self.assertTrue(1 <= int(r.headers["retry-after"]) <= 6, r.headers["retry-after"])
        # both processes admitted and refused: the decision was not per process
        by_server = {i % 2: [] for i in range(2)}
        for i, r in enumerate(responses):
            by_server[i % 2].append(r.status_code)
        for server, codes in by_server.items():
            with self.subTest(server=server):
                self.assertIn(429, codes)


class TrustedProxyTest(RateLimitTest):
    settings_overrides = {"trusted_proxies": (__import__("ipaddress").ip_network("127.0.0.0/8"),)}

    def test_each_forwarded_client_has_its_own_bucket(self):
        for _ in range(5):
            self.assertEqual(self.hit(headers={"X-Forwarded-For": "203.0.113.7"}).status_code, 422)
        self.assertEqual(self.hit(headers={"X-Forwarded-For": "203.0.113.7"}).status_code, 429)
        # the right-most untrusted hop is the client; a spoofed left-most entry does not buy a new bucket
        self.assertEqual(self.hit(headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.7"}).status_code, 429)
        self.assertEqual(self.hit(headers={"X-Forwarded-For": "203.0.113.8"}).status_code, 422)


@slow
class RefillTest(RateLimitTest):
    settings_overrides = {"rate_refill_seconds": 0.3}

    def test_tokens_come_back_at_the_refill_rate(self):
        codes = [self.hit().status_code for _ in range(6)]
        self.assertEqual(codes, [422] * 5 + [429])
        time.sleep(0.35)
        self.assertEqual(self.hit().status_code, 422)
        self.assertEqual(self.hit().status_code, 429)


@slow
class FailOpenTest(RateLimitTest):
    settings_overrides = {"rate_breaker_seconds": 0.5}

    def timed_hits(self, n):
        times = []
        for _ in range(n):
            start = time.perf_counter()
            r = self.hit()
            times.append(time.perf_counter() - start)
            self.assertEqual(r.status_code, 422)  # let through (then refused by validation), never 429 or 500
        return sorted(times)[n // 2]

    def test_requests_pass_quickly_while_redis_is_down_and_limiting_resumes(self):
        baseline = self.timed_hits(3)
        self.redis.flushall()
        with self.assertLogs("tidal.dashboard.ratelimit", "WARNING") as logs:
            self.redis_server.stop()
            outage = self.timed_hits(15)
            time.sleep(0.6)  # past the breaker: the next call tries Redis again, fails fast, logs nothing new
            self.timed_hits(3)
        self.assertLess(outage - baseline, 0.05, f"baseline {baseline * 1000:.1f} ms, outage {outage * 1000:.1f} ms")
        self.assertEqual(len([m for m in logs.output if "failing open" in m]), 1)
        r = self.hit()
        self.assertEqual(r.headers["x-ratelimit-limit"], "5")
        self.redis_server.start()
        time.sleep(0.6)
        wait_for(lambda: self.hit().status_code == 429, 10, message="limiting resumed")


if __name__ == "__main__":
    unittest.main()
