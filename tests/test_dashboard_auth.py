"""Bearer authentication: every mutating and worker route refuses a missing, wrong or differently-cased token
with 401 + WWW-Authenticate and accepts the right one (scheme case-insensitive); read-only routes are open."""
from __future__ import annotations

import unittest

import httpx

from tests.support import DASHBOARD_TOKEN, DashboardServer, RedisTestCase, dashboard_settings

JOB = "job-0123456789abcdef"
EXP = "20260101-120000-commit_nogit-config_0123456789"

# (method, path, json body) of every route that needs the token
PROTECTED = [
    ("POST", "/api/jobs", {"type": "lm-training", "configPath": "configs/base_config.yaml", "provider": "remote"}),
    ("POST", f"/api/jobs/{JOB}/signal", {"signal": "stop"}),
    ("POST", f"/api/jobs/{JOB}/cancel", None),
    ("POST", f"/api/workers/{JOB}/heartbeat", None),
    ("PATCH", f"/api/workers/{JOB}/status", {"status": "running"}),
    ("POST", f"/api/workers/{JOB}/logs", {"lines": []}),
    ("POST", f"/api/workers/{JOB}/metrics", {"experimentId": EXP, "records": []}),
    ("GET", f"/api/workers/{JOB}/signal", None),
    ("PATCH", f"/api/workers/{JOB}/experiment-id", {"experimentId": EXP}),
    ("PATCH", f"/api/experiments/{EXP}", {"name": "a run"}),
]
RATE_LIMITED = [("POST", "/api/generate"), ("POST", "/api/analyze-trajectories")]
OPEN = ["/api/health", "/api/plugins", "/api/plugins/tidal", "/api/plugins/tidal/configs",
        "/api/plugins/tidal/configs/base_config.yaml", "/api/experiments", "/api/jobs", "/api/jobs/active",
        f"/api/jobs/{JOB}", f"/api/jobs/{JOB}/logs", f"/api/experiments/{EXP}/metrics",
        f"/api/experiments/{EXP}/status", f"/api/experiments/{EXP}/rl-metrics",
        f"/api/experiments/{EXP}/checkpoints", f"/api/experiments/{EXP}/evaluation",
        f"/api/experiments/{EXP}/ablation", "/api/experiments/table"]


class AuthMatrixTest(RedisTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import tempfile

        cls._dir = tempfile.TemporaryDirectory()
        cls.server = DashboardServer(dashboard_settings(cls._dir.name, cls.redis_server.url)).start()
        cls.http = httpx.Client(base_url=cls.server.url, timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.server.stop()
        cls._dir.cleanup()
        super().tearDownClass()

    def call(self, method, path, body, authorization=None):
        headers = {"Authorization": authorization} if authorization is not None else {}
        return self.http.request(method, path, json=body, headers=headers)

    def test_every_non_get_route_is_either_protected_or_rate_limited(self):
        paths = self.http.get("/openapi.json").json()["paths"]  # what the app really serves, new routes included
        declared = {(m.upper(), p) for p, ops in paths.items() for m in ops if m not in ("get", "head")}
        self.assertGreaterEqual(len(declared), 10)  # jobs 3, generation 2, worker 5
        protected = {(m, p.replace(JOB, "{job_id}").replace(EXP, "{experiment_id}")) for m, p, _ in PROTECTED}
        self.assertEqual(declared - protected - set(RATE_LIMITED), set())

    def test_protected_routes_refuse_bad_credentials(self):
        wrong = [None, "", "Bearer", f"Basic {DASHBOARD_TOKEN}", "Bearer wrong-token",
                 f"Bearer {DASHBOARD_TOKEN.upper()}", f"Bearer {DASHBOARD_TOKEN.lower()}", f"Bearer {DASHBOARD_TOKEN}x",
                 f"Bearer {DASHBOARD_TOKEN[:-1]}", f"Token {DASHBOARD_TOKEN}", "Bearer tökén".encode()]
        for method, path, body in PROTECTED:
            for authorization in wrong:
                with self.subTest(route=f"{method} {path}", authorization=authorization):
                    r = self.call(method, path, body, authorization)
                    self.assertEqual(r.status_code, 401, r.text)
                    self.assertTrue(r.headers["www-authenticate"].startswith("Bearer"))
                    self.assertEqual(set(r.json()), {"error", "detail"})

    def test_protected_routes_accept_the_token_with_any_scheme_case(self):
        for method, path, body in PROTECTED:
            for scheme in ("Bearer", "bearer", "BEARER"):
                with self.subTest(route=f"{method} {path}", scheme=scheme):
                    r = self.call(method, path, body, f"{scheme} {DASHBOARD_TOKEN}")
                    self.assertNotIn(r.status_code, (401, 403, 500), r.text)
                    if path == "/api/jobs":  # clear the way for the next scheme (concurrency 1)
                        self.http.post(f"/api/jobs/{r.json()['job']['jobId']}/cancel",
                                       headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"})

    def test_read_only_routes_are_open(self):
        for path in OPEN:
            with self.subTest(path=path):
                r = self.http.get(path)
                self.assertNotIn(r.status_code, (401, 403, 500), r.text)

    def test_generation_needs_no_token(self):
        for method, path in RATE_LIMITED:
            r = self.http.request(method, path, json={})
            self.assertEqual(r.status_code, 422)  # validation, not authentication
            self.assertIn("x-ratelimit-limit", r.headers)


if __name__ == "__main__":
    unittest.main()
