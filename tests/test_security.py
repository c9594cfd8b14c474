"""Security properties of the dashboard, each against a real server:
- every operation in the OpenAPI schema that changes state, and every worker operation, refuses a missing, wrong or
  differently-cased token (401 + WWW-Authenticate) and accepts the right one: the list comes from the schema, so a
  new route cannot escape;
- the token never shows in the server's output, Redis (job records, logs), API answers, worker logs or the web
  client, and a trainer's environment holds no secret;
- `python -m dashboard` listens on loopback unless HOST says otherwise;
- a job runs only a manifest phase, with confined paths free of shell metacharacters.
(Spoofed X-Forwarded-For and the rate limit: tests/test_dashboard_ratelimit.py.)"""
from __future__ import annotations

import json
import re
import unittest
from pathlib import Path

import httpx

from core.testing import slow
from tests.support import (
    DASHBOARD_TOKEN,
    PROJECT_ROOT,
    DashboardProcess,
    LiveDashboardTestCase,
    RedisTestCase,
    auth_headers,
    fake_plugin,
    kill_job_processes,
    wait_for,
    write_fake_config,
)

# Open by design (README, "Dashboard"): read-only routes, and generation, which is rate limited instead.
OPEN_NON_GET = {("POST", "/api/generate"), ("POST", "/api/analyze-trajectories")}
PATH_VALUES = {"job_id": "job-0123456789abcdef", "experiment_id": "20260101-120000-commit_nogit-config_0123456789",
               "name": "tidal", "file": "base_config.yaml"}
WRONG = [None, "", "Bearer", f"Basic {DASHBOARD_TOKEN}", f"Token {DASHBOARD_TOKEN}", "Bearer wrong-token",
         f"Bearer {DASHBOARD_TOKEN.upper()}", f"Bearer {DASHBOARD_TOKEN.lower()}",
         f"Bearer {DASHBOARD_TOKEN.swapcase()}", f"Bearer {DASHBOARD_TOKEN}x", f"Bearer {DASHBOARD_TOKEN[:-1]}",
         f"Bearer x{DASHBOARD_TOKEN}",
         f"Bearer {DASHBOARD_TOKEN} {DASHBOARD_TOKEN}", f"Bearer{DASHBOARD_TOKEN}", "Bearer tökén".encode()]


def protected_operations(schema: dict) -> list[tuple[str, str]]:
    """(METHOD, path template) of every operation that must need the token: all but GETs, and all worker routes."""
    return sorted((method.upper(), path) for path, operations in schema["paths"].items() for method in operations
                  if (method != "get" or path.startswith("/api/workers/"))
                  and (method.upper(), path) not in OPEN_NON_GET)


class AuthFromSchemaTest(LiveDashboardTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.schema = cls.http.get("/openapi.json").json()
        cls.protected = protected_operations(cls.schema)

    def call(self, method, template, authorization=None):
        path = re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], template)
        headers = {} if authorization is None else {"Authorization": authorization}
        # an empty JSON body: authentication is decided before the body is validated
        return self.http.request(method, path, json={} if method != "GET" else None, headers=headers)

    def test_the_schema_has_the_protected_routes_and_documents_their_401(self):
        self.assertGreaterEqual(len(self.protected), 9)  # jobs (3) and workers (6) at least: never vacuous
        for method, path in self.protected:
            with self.subTest(route=f"{method} {path}"):
                self.assertIn("401", self.schema["paths"][path][method.lower()]["responses"])

    def test_every_protected_route_refuses_bad_credentials(self):
        for method, path in self.protected:
            for authorization in WRONG:
                with self.subTest(route=f"{method} {path}", authorization=authorization):
                    r = self.call(method, path, authorization)
                    self.assertEqual(r.status_code, 401, r.text)
                    self.assertTrue(r.headers["www-authenticate"].startswith("Bearer"))
                    self.assertEqual(set(r.json()), {"error", "detail"})
                    self.assertNotIn(DASHBOARD_TOKEN.lower(), r.text.lower())

    def test_every_protected_route_accepts_the_token_with_any_scheme_case(self):
        for method, path in self.protected:
            for scheme in ("Bearer", "bearer", "BEARER"):
                with self.subTest(route=f"{method} {path}", scheme=scheme):
                    r = self.call(method, path, f"{scheme} {DASHBOARD_TOKEN}")
                    self.assertNotIn(r.status_code, (401, 403), r.text)
                    self.assertLess(r.status_code, 500, r.text)

    def test_open_operations_need_no_token(self):
        for path, operations in self.schema["paths"].items():
            for method in operations:
                if (method.upper(), path) in self.protected or path.endswith("/stream"):
                    continue
                with self.subTest(route=f"{method.upper()} {path}"):
                    self.assertNotIn(self.call(method.upper(), path).status_code, (401, 403))


class CommandInjectionTest(LiveDashboardTestCase):
    """A job is a manifest phase run as an argv list (no shell); its paths are confined and refused outright when
    they hold shell metacharacters or control characters, even when such a file exists inside the configs dir."""

    @classmethod
    def populate(cls, root):
        cls.configs = cls.tmp / "configs"
        cls.configs.mkdir()
        cls.marker = cls.tmp / "pwned"
        for name in ("a;touch pwned.yaml", "a$(touch pwned).yaml", "a`touch pwned`.yaml", "a|id.yaml", "a&id.yaml",
                     "a>x.yaml", "a\nb.yaml", "ok.yaml"):
            (cls.configs / name).write_text("A: 1\n")
        cls.settings_overrides = {"extra_config_dirs": (cls.configs,)}

    def create(self, **body):
        return self.http.post("/api/jobs", json={"type": "lm-training", "provider": "remote", **body},
                              headers=auth_headers())

    def test_shell_metacharacters_in_paths_are_refused(self):
        for name in ("a;touch pwned.yaml", "a$(touch pwned).yaml", "a`touch pwned`.yaml", "a|id.yaml", "a&id.yaml",
                     "a>x.yaml", "a\nb.yaml"):
            for path in (str(self.configs / name), f"configs/base_config.yaml;touch {self.marker}"):
                with self.subTest(path=path):
                    r = self.create(configPath=path)
                    self.assertEqual(r.status_code, 400, r.text)
                    self.assertEqual(r.json()["detail"]["field"], "configPath")
        r = self.create(type="rl-training", configPath=str(self.configs / "ok.yaml"),
                        rlConfigPath="configs/rl_config.yaml", checkpoint="experiments/x;id/final.pth")
        self.assertEqual((r.status_code, r.json()["detail"]["field"]), (400, "checkpoint"))
        self.assertFalse(self.marker.exists())

    def test_only_manifest_phases_run(self):
        for job_type in ("lm-training; touch pwned", "python", "../lm-training", "lm-training\n"):
            with self.subTest(type=job_type):
                r = self.create(type=job_type, configPath=str(self.configs / "ok.yaml"))
                self.assertEqual(r.status_code, 400, r.text)
                self.assertEqual(r.json()["detail"]["validTypes"], ["lm-training", "rl-training"])
        r = self.create(configPath=str(self.configs / "ok.yaml"))  # a clean path still works
        self.assertEqual(r.status_code, 201, r.text)
        self.http.post(f"/api/jobs/{r.json()['job']['jobId']}/cancel", headers=auth_headers())


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket in LISTEN state on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hexport = local.partition(":")
            if state != "0A" or int(hexport, 16) != port:
                continue
            if len(address) == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
            else:
                found.add("::" if int(address, 16) == 0 else address)
    return found


@slow
class ProductionServerTest(RedisTestCase):
    """`python -m dashboard` as deployed, with secrets in its environment and a job whose trainer prints its own."""

    SECRETS = {"AWS_SECRET_ACCESS_KEY": "aws-Secret-1", "GITHUB_TOKEN": "ghp-Secret-2", "OPENAI_API_KEY": "sk-Secret-3",
               "HF_TOKEN": "hf-Secret-4"}

    def test_loopback_by_default_and_the_token_never_leaks(self):
        plugin = self.tmp / "plugin"
        manifest = fake_plugin(plugin)
        write_fake_config(plugin, STEPS=3, PRINT_ENV=True)
        experiments = self.tmp / "experiments"
        server = DashboardProcess(experiments, self.redis_url, log_level="debug", env={
            **self.SECRETS, "TIDAL_MANIFEST": str(manifest), "PYTHONPATH": str(plugin)}).start()
        self.addCleanup(server.close)
        self.assertEqual(listening_addresses(server.port), {"127.0.0.1"})
        http = httpx.Client(base_url=server.url, timeout=30)
        self.addCleanup(http.close)
        seen = []  # every answer body the server gave

        def request(method, path, **kwargs):
            r = http.request(method, path, **kwargs)
            seen.append(r.text)
            return r

        r = request("POST", "/api/jobs", json={"type": "fake-training", "configPath": "configs/fake.yaml"},
                    headers=auth_headers())
        self.assertEqual(r.status_code, 201, r.text)
        job = r.json()["job"]
        self.addCleanup(lambda: kill_job_processes([job]))  # the record last read (the server is gone by then)

        def finished():
            nonlocal job
            job = request("GET", f"/api/jobs/{job['jobId']}").json()["job"]
            return job["status"] in ("completed", "failed")

        wait_for(finished, 60, message="the job finished")
        job_id = job["jobId"]
        self.assertEqual(job["status"], "completed", job)
        for authorization in WRONG[1:]:  # wrong tokens that resemble the right one are not echoed either
            headers = {"Authorization": authorization}
            request("POST", f"/api/jobs/{job_id}/cancel", headers=headers)
            request("GET", f"/api/workers/{job_id}/signal", headers=headers)
        request("POST", "/api/jobs", json={"type": "nope", "configPath": "x"}, headers=auth_headers())
        request("POST", "/api/jobs", content=b"{", headers=auth_headers(**{"Content-Type": "application/json"}))
        request("GET", "/api/jobs/bad$id")
        logs = request("GET", f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()["lines"]
        request("GET", "/api/jobs")
        request("GET", "/openapi.json")
        for url in ["/", *client_files()]:
            with self.subTest(client_file=url):
                self.assertEqual(request("GET", url).status_code, 200)

        # the trainer's environment: nothing secret, nothing outside the worker's allowlist
        import worker_agent

        env = dict(line["line"][4:].split("=", 1) for line in logs if line["line"].startswith("env "))
        self.assertIn("TIDAL_EXPERIMENT_ID", env)
        self.assertEqual({k for k in env if k not in worker_agent.ENV_ALLOW
                          and not k.startswith(worker_agent.ENV_ALLOW_PREFIXES)},
                         {"TIDAL_EXPERIMENT_ID", "TIDAL_JOB_ID", "PYTHONUNBUFFERED"})
        for secret in (DASHBOARD_TOKEN, *self.SECRETS.values()):
            self.assertNotIn(secret, json.dumps(env))

        server.stop()
        places = {"server output": server.output(), "API answers": "\n".join(seen),
                  "worker logs": "\n".join(p.read_text() for p in (experiments / ".workers").glob("*.log")),
                  "Redis": dump_redis(self.redis)}
        self.assertIn("GET /api/jobs", places["server output"])  # the access log was captured
        for place, text in places.items():
            with self.subTest(place=place):
                self.assertNotIn(DASHBOARD_TOKEN, text)
                self.assertNotIn(DASHBOARD_TOKEN.lower(), text.lower())

    def test_host_opts_in_to_other_interfaces(self):
        server = DashboardProcess(self.tmp / "experiments", self.redis_url, env={"HOST": "0.0.0.0"},
                                  log_level="warning").start()
        self.addCleanup(server.close)
        self.assertEqual(listening_addresses(server.port), {"0.0.0.0"})


def client_files() -> list[str]:
    """URL paths of every file of the web client the server serves (node_modules excepted)."""
    root = PROJECT_ROOT / "dashboard" / "client"
    return sorted("/" + p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and "node_modules" not in p.parts)


def dump_redis(client) -> str:
    """Every key and value in the database, as text."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value = {"string": client.get, "hash": client.hgetall, "list": lambda k: client.lrange(k, 0, -1),
                 "set": client.smembers, "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                 "stream": lambda k: client.xrange(k)}.get(kind, lambda k: None)(key)
        out.append(f"{key} {value}")
    return "\n".join(out)


if __name__ == "__main__":
    unittest.main()
