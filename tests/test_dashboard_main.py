"""`python -m dashboard`: refuses to start without a token, demo mode makes one (mode 0600), an invalid manifest
stops start-up with a line naming the file and the field; the embedded Redis is started and stopped with it."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import unittest

import httpx

from core.net import discover_redis_url
from core.testing import slow
from tests.support import PROJECT_ROOT, TempDirTestCase, free_port, http_ok, wait_for


@slow
class DashboardMainTest(TempDirTestCase):
    def env(self, **extra):
        env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_AUTH_TOKEN", "REDIS_URL")}
        env.update(EXPERIMENTS_DIR=str(self.tmp / "experiments"), **extra)
        return env

    def test_refuses_to_start_without_a_token(self):
        proc = subprocess.run([sys.executable, "-m", "dashboard"], cwd=PROJECT_ROOT, env=self.env(),
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertIn("TIDAL_AUTH_TOKEN", proc.stderr)

    def test_an_invalid_manifest_stops_start_up_naming_file_and_field(self):
        bad = self.tmp / "manifest.yaml"
        bad.write_text("name: tidal\ndisplayName: x\n")
        proc = subprocess.run([sys.executable, "-m", "dashboard"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              env=self.env(TIDAL_AUTH_TOKEN="t", TIDAL_MANIFEST=str(bad)), timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(str(bad), proc.stderr)
        self.assertIn("field", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_demo_mode_generates_a_private_token_and_serves_with_embedded_redis(self):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--demo", "--port", str(port),
                                 "--log-level", "warning"], cwd=PROJECT_ROOT, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            first = proc.stdout.readline()
            self.assertIn("demo mode: auth token", first)
            token = first.split("auth token ")[1].split()[0]
            path = self.tmp / "experiments" / ".dashboard_token"
            self.assertEqual(path.read_text().strip(), token)
            self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: http_ok(url + "/api/health"), 60, message="dashboard up")
            self.assertEqual(httpx.get(url + "/api/health").json()["redis"], "ok")
            self.assertIn("Tidal dashboard", httpx.get(url + "/").text)
            r = httpx.post(url + "/api/jobs/job-none/cancel", headers={"Authorization": f"Bearer {token}"})
            self.assertEqual(r.status_code, 404)  # authenticated; the job just does not exist
            r = httpx.post(url + "/api/jobs/job-none/cancel", headers={"Authorization": "Bearer nope"})
            self.assertEqual(r.status_code, 401)
            redis_port = int((self.tmp / "experiments" / ".redis" / "port").read_text())
            # announced under the experiments directory, where a run started from the CLI finds it (ADR 0006)
            announced = self.tmp / "experiments" / ".redis_url"
            self.assertEqual(discover_redis_url(self.tmp / "experiments"), f"redis://127.0.0.1:{redis_port}/0")
            self.assertEqual(stat.S_IMODE(announced.stat().st_mode), 0o600)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        self.assertIn(proc.returncode, (0, -signal.SIGTERM), out)  # uvicorn re-raises the signal after shutdown
        self.assertEqual(out.count(token), 0)  # printed once (the first line), never again
        self.assertFalse(announced.exists(), "the announcement goes with the server")
        import socket
        with self.assertRaises(OSError):  # the embedded Redis went with the server
            socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()



if __name__ == "__main__":
    unittest.main()
