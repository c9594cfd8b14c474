"""worker_agent.py end to end: jobs created through the API, run by a real worker subprocess (local provider, or
remote mode through the worker API) around a small fake trainer that honours the SIGUSR1/SIGTERM contract."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unittest

import httpx

import worker_agent
from core.manifest import load_manifest
from core.testing import slow
from tests.support import (
    PROJECT_ROOT,
    DashboardServer,
    RedisTestCase,
    auth_headers,
    dashboard_settings,
    fake_plugin,
    kill_job_processes,
    pid_alive,
    wait_for,
    write_fake_config,
)

KEYS = load_manifest().redis


class FilteredEnvTest(unittest.TestCase):
    def test_allowlist_never_passes_the_token(self):
        env = worker_agent.filtered_env(
            {"PATH": "/bin", "HOME": "/root", "TIDAL_AUTH_TOKEN": "secret", "AWS_SECRET_ACCESS_KEY": "x",
             "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2", "GITHUB_TOKEN": "y", "PYTHONPATH": "/p"},
            {"TIDAL_EXPERIMENT_ID": "e1", "REDIS_URL": None, "TIDAL_AUTH_TOKEN": "again"})
        self.assertEqual(env, {"PATH": "/bin", "HOME": "/root", "CUDA_VISIBLE_DEVICES": "0", "OMP_NUM_THREADS": "2",
                               "PYTHONPATH": "/p", "TIDAL_EXPERIMENT_ID": "e1"})


class WorkerTestCase(RedisTestCase):
    server_overrides: dict = {}

    def setUp(self):
        super().setUp()
        self.plugin = self.tmp / "plugin"
        self.manifest_path = fake_plugin(self.plugin)
        self.experiments = self.tmp / "experiments"
        settings = dashboard_settings(self.experiments, self.redis_url, manifest_path=self.manifest_path,
                                      worker_env={"PYTHONPATH": str(self.plugin)}, **self.server_overrides)
        self.server = DashboardServer(settings).start()
        self.addCleanup(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=10)
        self.addCleanup(self.http.close)
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self):
        kill_job_processes(self.http.get("/api/jobs").json().get("jobs", []) if not self.http.is_closed else [])
        wait_for(lambda: self.server.services.providers["local"].reap() == 0, 10, message="workers reaped")

    def create_job(self, provider="local", **config) -> str:
        write_fake_config(self.plugin, **config)
        r = self.http.post("/api/jobs", json={"type": "fake-training", "configPath": "configs/fake.yaml",
                                              "provider": provider}, headers=auth_headers())
        self.assertEqual(r.status_code, 201, r.text)
        return r.json()["job"]["jobId"]

    def job(self, job_id) -> dict:
        return self.http.get(f"/api/jobs/{job_id}").json()["job"]

    def wait_status(self, job_id, *statuses, timeout=30.0) -> dict:
        return wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout,
                        message=f"job status in {statuses} (last: {self.job(job_id)['status']})")

    def log_lines(self, job_id) -> list[str]:
        body = self.http.get(f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()
        return [line["line"] for line in body["lines"]]

    def wait_log(self, job_id, text, timeout=20.0):
        wait_for(lambda: any(text in line for line in self.log_lines(job_id)), timeout, message=f"log {text!r}")


@slow
class LocalWorkerTest(WorkerTestCase):
    def test_a_job_runs_to_completion_with_logs_and_an_experiment_id(self):
        job_id = self.create_job(STEPS=4)
        job = self.wait_status(job_id, "completed", "failed")
        self.assertEqual((job["status"], job["exitCode"]), ("completed", 0), job)
        self.assertTrue(job["experimentId"].startswith(time.strftime("%Y%m%d")))
        self.assertIn("-config_", job["experimentId"])
        self.assertIsNotNone(job["startedAt"])
        self.assertGreaterEqual(job["completedAt"], job["startedAt"])
        lines = self.log_lines(job_id)
        self.assertIn("step 3", lines)
        self.assertIn("warn 3", lines)  # stderr is streamed too
        self.assertIn("token visible: False", lines)
        start = next(line for line in lines if line.startswith("fake trainer start"))
        self.assertIn(f"--config {self.plugin / 'configs' / 'fake.yaml'}", start)
        self.assertIn(f"experiment {job['experimentId']}", start)
        streams = {line["stream"] for line in self.http.get(f"/api/jobs/{job_id}/logs").json()["lines"]}
        self.assertEqual(streams, {"stdout", "stderr"})
        self.assertFalse(self.redis.sismember(KEYS.jobsActiveSet, job_id))

    def test_a_failing_trainer_fails_the_job_with_exit_code_and_stderr_tail(self):
        job_id = self.create_job(STEPS=3, EXIT_CODE=3)
        job = self.wait_status(job_id, "completed", "failed")
        self.assertEqual((job["status"], job["exitCode"]), ("failed", 3))
        self.assertIn("exited with code 3", job["error"])
        self.assertIn("warn 2", job["error"])

    def test_complete_signal_sends_sigusr1_and_the_job_completes(self):
        job_id = self.create_job(STEPS=100000, SLEEP=0.05)
        self.wait_status(job_id, "running")
        self.wait_log(job_id, "step 1")
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "complete"}, headers=auth_headers())
        self.assertEqual(r.json()["job"]["status"], "completing")
        job = self.wait_status(job_id, "completed", "failed", "cancelled")
        self.assertEqual((job["status"], job["exitCode"]), ("completed", 0))
        self.assertTrue(any(line.startswith("complete requested") for line in self.log_lines(job_id)))

    def test_stop_signal_sends_sigterm_and_the_job_is_cancelled(self):
        job_id = self.create_job(STEPS=100000, SLEEP=0.05)
        self.wait_log(job_id, "step 1")  # the trainer's signal handlers are in place
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "stop"}, headers=auth_headers())
        self.assertEqual(r.json()["job"]["status"], "stopping")
        job = self.wait_status(job_id, "completed", "failed", "cancelled")
        self.assertEqual((job["status"], job["exitCode"], job["error"]), ("cancelled", 143, "stopped by user"))
        self.assertIn("terminated: checkpointing", self.log_lines(job_id))

    def test_cancel_of_a_running_job_stops_its_trainer(self):
        job_id = self.create_job(STEPS=100000, SLEEP=0.05)
        child = self.wait_status(job_id, "running")["childPid"]
        r = self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        self.assertEqual(r.json()["job"]["status"], "cancelled")
        wait_for(lambda: not pid_alive(child), 15, message="trainer gone")
        self.assertEqual(self.job(job_id)["status"], "cancelled")


@slow
class GraceTest(WorkerTestCase):
    server_overrides = {"stop_grace": 0.5}

    def test_a_trainer_that_ignores_sigterm_is_killed_after_the_grace_period(self):
        job_id = self.create_job(STEPS=100000, SLEEP=0.05, IGNORE_TERM=True)
        self.wait_log(job_id, "step 1")
        self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": "stop"}, headers=auth_headers())
        job = self.wait_status(job_id, "completed", "failed", "cancelled")
        self.assertEqual((job["status"], job["exitCode"]), ("cancelled", -signal.SIGKILL))
        self.assertIn("killed after the grace period", job["error"])


@slow
class LostWorkerTest(WorkerTestCase):
    """The health monitor fails a job whose worker died, once its last heartbeat is `heartbeat_timeout` old: between
    timeout - interval and timeout + monitor period after the kill. Production timers (10 s beats, 60 s timeout, 5 s
    monitor: 50-65 s) with TIDAL_TEST_PRODUCTION_TIMERS=1, which also prints the measured delay; shortened here."""
    PRODUCTION = bool(os.environ.get("TIDAL_TEST_PRODUCTION_TIMERS"))
    server_overrides = ({"heartbeat_interval": 10.0, "heartbeat_timeout": 60.0, "monitor_interval": 5.0}
                        if PRODUCTION else {"heartbeat_timeout": 1.5})

    def test_a_sigkilled_worker_is_detected_and_its_trainer_dies_with_it(self):
        s = self.server.settings
        job_id = self.create_job(STEPS=100000, SLEEP=0.05)
        job = self.wait_status(job_id, "running")
        wait_for(lambda: self.redis.get(KEYS.heartbeat(job_id)), message="a heartbeat")
        os.kill(job["workerPid"], signal.SIGKILL)
        killed_at = time.time()
        job = self.wait_status(job_id, "failed", timeout=s.heartbeat_timeout + s.monitor_interval + 15)
        self.assertEqual(job["error"], "worker heartbeat lost")
        delay = job["completedAt"] - killed_at
        # never before the last heartbeat has expired (a load-delayed monitor can only be later, so no upper bound)
        self.assertGreaterEqual(delay, s.heartbeat_timeout - s.heartbeat_interval - 0.1)
        if self.PRODUCTION:
            print(f"\nworker SIGKILL -> job failed after {delay:.1f} s", file=sys.stderr)
        wait_for(lambda: not pid_alive(job["childPid"]), 10, message="orphaned trainer gone")


@slow
class RejectedJobTest(WorkerTestCase):
    def test_the_worker_revalidates_paths_from_the_job_record(self):
        job_id = self.create_job(STEPS=100000, SLEEP=0.05)
        self.wait_status(job_id, "running")
        self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        # a record tampered with in Redis must not make the worker run a config from outside the configs dir
        raw = json.loads(self.redis.hget(KEYS.jobsHash, job_id))
        raw.update(status="provisioning", jobId="job-tampered", experimentId=None)
        raw["config"]["configPath"] = "/etc/passwd"
        self.redis.hset(KEYS.jobsHash, "job-tampered", json.dumps(raw))
        env = {**os.environ, "EXPERIMENTS_DIR": str(self.experiments), "TIDAL_MANIFEST": str(self.manifest_path)}
        proc = subprocess.run([sys.executable, "worker_agent.py", "--job-id", "job-tampered", "--redis-url",
                               self.redis_url], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 1, proc.stdout + proc.stderr)
        job = json.loads(self.redis.hget(KEYS.jobsHash, "job-tampered"))
        self.assertEqual(job["status"], "failed")
        self.assertIn("configPath", job["error"])


@slow
class RemoteWorkerTest(WorkerTestCase):
    server_overrides = {"heartbeat_interval": 0.2}

    def test_a_remote_worker_runs_a_job_through_the_worker_api(self):
        job_id = self.create_job(provider="remote", STEPS=6, SLEEP=0.05, METRICS=True)
        self.assertEqual(self.job(job_id)["status"], "provisioning")
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(EXPERIMENTS_DIR=str(self.experiments), TIDAL_MANIFEST=str(self.manifest_path),
                   PYTHONPATH=str(self.plugin), TIDAL_AUTH_TOKEN=auth_headers()["Authorization"].split()[1])
        proc = subprocess.Popen([sys.executable, "worker_agent.py", "--job-id", job_id, "--api-url", self.server.url,
                                 "--heartbeat-interval", "0.2", "--poll-interval", "0.1"],
                                cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
        self.assertEqual(proc.returncode, 0, out)
        self.assertNotIn("--auth-token", " ".join(proc.args))
        job = self.job(job_id)
        self.assertEqual((job["status"], job["exitCode"]), ("completed", 0))
        self.assertIn("step 5", self.log_lines(job_id))
        self.assertIsNotNone(self.redis.get(KEYS.heartbeat(job_id)))
        # the trainer had no Redis: the worker forwarded its metric files, and the dashboard re-published them
        exp_id = job["experimentId"]
        entries = self.redis.xrange(KEYS.metrics_stream(exp_id))
        kinds = [fields["kind"] for _, fields in entries]
        self.assertEqual(kinds.count("metrics"), 6)
        self.assertIn("status", kinds)
        self.assertTrue(self.redis.sismember(KEYS.experimentsSet, exp_id))

    def test_a_remote_worker_needs_a_token(self):
        env = {k: v for k, v in os.environ.items() if k != "TIDAL_AUTH_TOKEN"}
        proc = subprocess.run([sys.executable, "worker_agent.py", "--job-id", "job-x", "--api-url", self.server.url],
                              cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("TIDAL_AUTH_TOKEN", proc.stderr)


if __name__ == "__main__":
    unittest.main()
