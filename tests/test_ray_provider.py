"""The `ray` compute provider: dashboard jobs submitted to a REAL Ray head (started here on loopback, one CPU) through
Ray's job submission API, with the worker agent as the entrypoint; logs, heartbeats, signals and metrics still flow
through Redis. Also the settings side (one clear line when the ray package is missing) and the resource mapping,
which need no cluster.

The cluster tests are skipped (with the reason) only when `ray` is not importable: `make setup` installs it from
requirements-dev.txt. One head serves the whole class (it takes ~10 s to start on 2 cores)."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from unittest import mock

import httpx
import yaml

from core.manifest import load_manifest
from core.testing import kill_process_group, slow
from tests.support import (
    DASHBOARD_TOKEN,
    PROJECT_ROOT,
    DashboardServer,
    EmbeddedRedis,
    auth_headers,
    dashboard_settings,
    fake_plugin,
    free_port,
    http_ok,
    kill_job_processes,
    pid_alive,
    run_python,
    wait_for,
    write_fake_config,
)

RAY = importlib.util.find_spec("ray") is not None
NO_RAY = "the ray package is not installed (pip install -r requirements-dev.txt, or make setup)"
RAY_MISSING = "DEFAULT_COMPUTE_PROVIDER=ray needs the ray package: pip install 'ray[default]'"
KEYS = load_manifest().redis


class RaySettingsTest(unittest.TestCase):
    """No cluster needed: how the provider is chosen and what a job asks Ray for."""

    def test_choosing_ray_without_the_package_is_one_clear_line(self):
        from dashboard.server.settings import Settings, SettingsError

        with mock.patch.dict(sys.modules, {"ray": None, "ray.job_submission": None}):  # importing them fails
            with self.assertRaises(SettingsError) as caught:
                Settings.from_env({"DEFAULT_COMPUTE_PROVIDER": "ray"})
            self.assertEqual(str(caught.exception), RAY_MISSING)
            from dashboard.server.services.providers import make_providers

            with self.assertRaises(SettingsError) as caught:  # settings made in code get the same line
                make_providers(Settings.from_env({}).with_(default_provider="ray"))
            self.assertEqual(str(caught.exception), RAY_MISSING)
            # RAY_ADDRESS alone (Ray's own variable, maybe set for something else) does not stop a local server
            with self.assertLogs("tidal.dashboard.providers", "WARNING") as logs:
                providers = make_providers(Settings.from_env({"RAY_ADDRESS": "http://127.0.0.1:1"}))
            self.assertEqual(sorted(providers), ["local", "remote"])
            self.assertIn("no ray provider", logs.output[0])

    @slow
    def test_python_m_dashboard_says_it_in_one_line_and_exits_2(self):
        code = ("import sys; sys.modules['ray'] = None\n"
                "from dashboard.__main__ import main\nsys.exit(main([]))")
        with tempfile.TemporaryDirectory(prefix="tidal-ray-") as tmp:
            result = run_python("-c", code, timeout=60, env={
                "DEFAULT_COMPUTE_PROVIDER": "ray", "TIDAL_AUTH_TOKEN": DASHBOARD_TOKEN, "EXPERIMENTS_DIR": tmp})
        self.assertEqual(result.returncode, 2, result.stdout + result.stderr)
        self.assertEqual(result.stderr.strip().splitlines(), [f"error: {RAY_MISSING}"])

    def test_providers_are_validated_and_ray_is_one_of_them(self):
        from dashboard.server.settings import Settings, SettingsError

        with self.assertRaises(SettingsError) as caught:
            Settings.from_env({"DEFAULT_COMPUTE_PROVIDER": "slurm"})
        self.assertIn("expected local, remote or ray", str(caught.exception))
        settings = Settings.from_env({"RAY_ADDRESS": "http://10.0.0.5:8265", "RAY_NUM_GPUS": "0",
                                      "RAY_NUM_CPUS": "2.5"})
        self.assertEqual((settings.ray_address, settings.ray_num_gpus, settings.ray_num_cpus),
                         ("http://10.0.0.5:8265", 0.0, 2.5))
        self.assertIsNone(Settings.from_env({}).ray_num_gpus)  # unset: from the manifest
        with self.assertRaises(SettingsError):
            Settings.from_env({"RAY_NUM_GPUS": "-1"})

    def test_resources_come_from_the_phase_gpu_tier(self):
        from dashboard.server.services.providers import phase_resources

        manifest = load_manifest()  # lm-training: tier standard = 4 CPU cores and a 16 GB GPU
        self.assertEqual(phase_resources(manifest, "lm-training"),
                         {"entrypoint_num_cpus": 4, "entrypoint_num_gpus": 1})
        # a CPU-only cluster: the operator says so (RAY_NUM_GPUS=0), the CPUs still come from the manifest
        self.assertEqual(phase_resources(manifest, "lm-training", num_gpus=0.0),
                         {"entrypoint_num_cpus": 4, "entrypoint_num_gpus": 0.0})
        with tempfile.TemporaryDirectory(prefix="tidal-ray-") as tmp:
            cpu_only = load_manifest(cpu_plugin(Path(tmp)))
        self.assertEqual(phase_resources(cpu_only, "fake-training"),
                         {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0})
        self.assertEqual(phase_resources(manifest, "no-such-phase"),  # declares nothing: one CPU
                         {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 0})

    @unittest.skipUnless(RAY, NO_RAY)
    def test_the_ray_job_environment_carries_redis_and_timers_but_never_the_token(self):
        from dashboard.server.services.providers import RayProvider
        from dashboard.server.settings import Settings

        settings = Settings.from_env({}).with_(
            default_provider="ray", auth_token=DASHBOARD_TOKEN, heartbeat_interval=0.5,
            worker_env={"PYTHONPATH": "/p", "TIDAL_AUTH_TOKEN": DASHBOARD_TOKEN})
        with mock.patch.dict(os.environ, {"TIDAL_AUTH_TOKEN": DASHBOARD_TOKEN}):
            provider = RayProvider(settings)
            env = provider.runtime_env("redis://10.0.0.5:6379/0")["env_vars"]
            entrypoint = provider.entrypoint({"jobId": "job-0123456789abcdef"}, "redis://10.0.0.5:6379/0")
        self.assertEqual(env["REDIS_URL"], "redis://10.0.0.5:6379/0")
        self.assertEqual((env["PYTHONPATH"], env["TIDAL_HEARTBEAT_INTERVAL"]), ("/p", "0.5"))
        self.assertEqual(env["EXPERIMENTS_DIR"], str(settings.experiments_dir))
        self.assertNotIn("TIDAL_AUTH_TOKEN", env)
        self.assertNotIn(DASHBOARD_TOKEN, json.dumps(env) + entrypoint)
        self.assertIn(f"{PROJECT_ROOT / 'worker_agent.py'} --job-id job-0123456789abcdef --redis-url "
                      f"redis://10.0.0.5:6379/0", entrypoint)
        self.assertEqual(provider.address, "http://127.0.0.1:8265")  # RAY_ADDRESS unset: Ray's default

        provider = RayProvider(settings.with_(ray_num_gpus=0.0))  # lm-training on a CPU-only cluster
        provider._client = mock.Mock(**{"submit_job.return_value": "tidal-job-0123456789abcdef"})
        fields = provider.provision({"jobId": "job-0123456789abcdef", "type": "lm-training"}, "redis://h:1/0")
        self.assertEqual(fields["raySubmissionId"], "tidal-job-0123456789abcdef")
        submitted = provider._client.submit_job.call_args.kwargs
        self.assertEqual((submitted["entrypoint_num_cpus"], submitted["entrypoint_num_gpus"]), (4, 0.0))
        self.assertEqual(submitted["submission_id"], "tidal-job-0123456789abcdef")


def cpu_plugin(root: Path, **phase) -> Path:
    """The fake plugin (tests.support) whose `fake-training` phase is on a CPU-only tier asking 1 core."""
    path = fake_plugin(root, gpuTier="cpu-test", **phase)
    manifest = yaml.safe_load(path.read_text())
    manifest["infrastructure"]["gpuTiers"]["cpu-test"] = {"minGpuRamMb": 0, "minCpuCores": 1}
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


class RayHead:
    """`ray start --head --block` on loopback in a session of its own, so that one SIGKILL to its process group ends
    it (`ray stop` would end every Ray on the machine; a SIGTERM drains for up to 30 s)."""

    def __init__(self, temp_dir: Path, num_cpus: int = 1):
        self.temp_dir = temp_dir
        self.dashboard_port = free_port()
        self.command = [
            str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={free_port()}",
            "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--num-cpus={num_cpus}", "--num-gpus=0", "--include-dashboard=true", f"--temp-dir={temp_dir}",
            "--object-store-memory=78643200", "--disable-usage-stats"]
        self.log = temp_dir / "ray-head.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 120.0) -> RayHead:
        env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_AUTH_TOKEN", "REDIS_URL", "RAY_ADDRESS")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.command, cwd=self.temp_dir, env=env, stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        try:
            wait_for(lambda: self.process.poll() is not None or http_ok(self.url + "/api/version"), timeout,
                     interval=0.2, message="the Ray head's dashboard")
        except AssertionError:
            self.stop()
            raise
        if self.process.poll() is not None:
            raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self.process is not None:
            kill_process_group(self.process)


@slow
@unittest.skipUnless(RAY, NO_RAY)
class RayProviderTest(unittest.TestCase):
    """One Ray head (1 CPU), one Redis and one dashboard (default provider ray) for the class; every test ends its
    jobs, so the next finds the cluster idle. The heartbeat timeout is long (30 s): a job that fails faster than that
    was failed through Ray's job status, not through lost heartbeats."""

    @classmethod
    def setUpClass(cls):
        from ray.job_submission import JobSubmissionClient

        super().setUpClass()
        cls._dir = tempfile.TemporaryDirectory(prefix="tidal-ray-")
        cls.tmp = Path(cls._dir.name)
        (cls.tmp / "ray").mkdir()
        cls.head = RayHead(cls.tmp / "ray").start()
        cls.redis_server = cls.server = None
        try:
            cls.plugin = cls.tmp / "plugin"
            manifest = cpu_plugin(cls.plugin, concurrency=3)
            cls.redis_server = EmbeddedRedis().start()
            cls.heartbeat_timeout = 30.0
            settings = dashboard_settings(cls.tmp / "experiments", cls.redis_server.url, manifest_path=manifest,
                                          worker_env={"PYTHONPATH": str(cls.plugin)}, default_provider="ray",
                                          ray_address=cls.head.url, heartbeat_timeout=cls.heartbeat_timeout,
                                          rate_capacity=10_000)
            cls.server = DashboardServer(settings).start()
        except BaseException:
            cls._stop_services()
            raise
        cls.http = httpx.Client(base_url=cls.server.url, timeout=30)
        cls.ray = JobSubmissionClient(cls.head.url)
        import redis

        cls.redis = redis.Redis.from_url(cls.redis_server.url, decode_responses=True)

    @classmethod
    def _stop_services(cls):
        if cls.server is not None:
            cls.server.stop()
        cls.head.stop()
        if cls.redis_server is not None:
            cls.redis_server.stop()
        cls._dir.cleanup()

    @classmethod
    def tearDownClass(cls):
        jobs = cls.http.get("/api/jobs").json().get("jobs", [])
        kill_job_processes(jobs)  # Ray runs each entrypoint in a session of its own: end leftovers first
        cls.http.close()
        cls.redis.close()
        cls._stop_services()
        super().tearDownClass()

    # ---- helpers
    def create(self, name: str, **config) -> dict:
        write_fake_config(self.plugin, f"{name}.yaml", **config)
        r = self.http.post("/api/jobs", json={"type": "fake-training", "configPath": f"configs/{name}.yaml"},
                           headers=auth_headers())
        self.assertEqual(r.status_code, 201, r.text)
        job = r.json()["job"]
        self.addCleanup(self._end, job["jobId"])
        return job

    def _end(self, job_id: str) -> None:
        """A test that failed midway must not leave a job holding the cluster's one CPU."""
        job = self.job(job_id)
        if job["status"] not in ("completed", "failed", "cancelled"):
            self.http.post(f"/api/jobs/{job_id}/cancel", headers=auth_headers())
        try:
            self.ray.stop_job(job.get("raySubmissionId") or f"tidal-{job_id}")
        except Exception:
            pass
        kill_job_processes([self.job(job_id)])

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/api/jobs/{job_id}").json()["job"]

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 40.0) -> dict:
        return wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout, interval=0.05,
                        message=f"job status in {statuses} (last: {self.job(job_id)['status']})")

    def ray_status(self, job: dict) -> str:
        return str(self.ray.get_job_status(job["raySubmissionId"]))

    def wait_ray(self, job: dict, *statuses: str, timeout: float = 30.0) -> str:
        return wait_for(lambda: (s := self.ray_status(job)) in statuses and s, timeout, interval=0.1,
                        message=f"Ray job status in {statuses}")

    def log_lines(self, job_id: str) -> list[str]:
        body = self.http.get(f"/api/jobs/{job_id}/logs", params={"limit": 5000}).json()
        return [line["line"] for line in body["lines"]]

    def wait_log(self, job_id: str, text: str, timeout: float = 40.0) -> None:
        wait_for(lambda: any(text in line for line in self.log_lines(job_id)), timeout, interval=0.05,
                 message=f"log line {text!r}")

    def signal(self, job_id: str, name: str) -> dict:
        r = self.http.post(f"/api/jobs/{job_id}/signal", json={"signal": name}, headers=auth_headers())
        self.assertEqual(r.status_code, 200, r.text)
        return r.json()["job"]

    # ---- (a)
    def test_a_job_runs_on_ray_to_completion_with_logs_and_metrics_through_redis(self):
        job = self.create("complete", STEPS=4, METRICS=True)
        self.assertEqual((job["provider"], job["status"]), ("ray", "provisioning"))  # the worker attaches itself
        self.assertEqual(job["raySubmissionId"], f"tidal-{job['jobId']}")
        info = self.ray.get_job_info(job["raySubmissionId"])
        self.assertEqual(info.metadata["tidalJobId"], job["jobId"])
        env = info.runtime_env["env_vars"]
        self.assertEqual(env["REDIS_URL"], self.redis_server.url)
        self.assertNotIn(DASHBOARD_TOKEN, json.dumps(info.runtime_env) + info.entrypoint)
        self.assertIn(f"worker_agent.py --job-id {job['jobId']}", info.entrypoint)

        done = self.wait_status(job["jobId"], "completed", "failed", "cancelled")
        self.assertEqual((done["status"], done["exitCode"]), ("completed", 0), done)
        self.assertEqual(done["host"], socket.gethostname())  # recorded by the worker when it attached
        lines = self.log_lines(job["jobId"])
        self.assertIn("step 3", lines)
        self.assertIn("warn 3", lines)
        self.assertIn("token visible: False", lines)
        self.assertGreaterEqual(self.redis.xlen(KEYS.metrics_stream(done["experimentId"])), 4)
        self.assertEqual(self.wait_ray(job, "SUCCEEDED", "FAILED", "STOPPED"), "SUCCEEDED")

    # ---- (b)
    def test_b_a_stop_signal_through_the_api_reaches_the_trainer_on_ray(self):
        job = self.create("stop", STEPS=100000, SLEEP=0.05)
        self.wait_log(job["jobId"], "step 1")
        self.assertIsNotNone(self.redis.get(KEYS.heartbeat(job["jobId"])))  # heartbeats reach Redis from Ray
        self.assertEqual(self.ray_status(job), "RUNNING")
        self.assertEqual(self.signal(job["jobId"], "stop")["status"], "stopping")
        done = self.wait_status(job["jobId"], "completed", "failed", "cancelled")
        self.assertEqual((done["status"], done["exitCode"], done["error"]), ("cancelled", 143, "stopped by user"))
        self.assertIn("terminated: checkpointing", self.log_lines(job["jobId"]))
        self.wait_ray(job, "SUCCEEDED", "FAILED", "STOPPED")  # the entrypoint ended with the job

    # ---- (c)
    def test_c_a_ray_job_killed_behind_the_dashboards_back_is_failed_by_the_health_monitor(self):
        job = self.create("killed", STEPS=100000, SLEEP=0.05)
        self.wait_log(job["jobId"], "step 1")
        running = self.job(job["jobId"])
        os.kill(running["workerPid"], signal.SIGKILL)  # no final report: only Ray knows the entrypoint died
        killed_at = time.monotonic()
        done = self.wait_status(job["jobId"], "completed", "failed", "cancelled")
        self.assertLess(time.monotonic() - killed_at, self.heartbeat_timeout / 2)  # not the heartbeat rule
        self.assertEqual(done["status"], "failed")
        self.assertTrue(done["error"].startswith(f"Ray job {job['raySubmissionId']} FAILED"), done["error"])
        self.assertIn("exit code -9", done["error"])
        self.assertNotIn("\n", done["error"])  # Ray's copy of the job's output stays out of the record
        self.assertEqual(self.ray_status(job), "FAILED")
        wait_for(lambda: not pid_alive(running["childPid"]), 10, message="the trainer to die with its worker")

        # stopped through Ray's own API instead: the worker gets SIGTERM and reports its end itself
        job = self.create("stopped-by-ray", STEPS=100000, SLEEP=0.05)
        self.wait_log(job["jobId"], "step 1")
        self.ray.stop_job(job["raySubmissionId"])
        done = self.wait_status(job["jobId"], "completed", "failed", "cancelled")
        self.assertEqual(done["status"], "failed")
        self.assertTrue(done["error"] == "worker terminated by signal 15"
                        or done["error"].startswith(f"Ray job {job['raySubmissionId']} STOPPED"), done["error"])
        self.assertEqual(self.wait_ray(job, "SUCCEEDED", "FAILED", "STOPPED"), "STOPPED")

    # ---- (d)
    def test_d_jobs_queue_on_ray_until_the_cluster_has_a_cpu_free(self):
        first = self.create("queue-first", STEPS=100000, SLEEP=0.05)
        self.wait_log(first["jobId"], "step 1")
        second = self.create("queue-second", STEPS=3)
        third = self.create("queue-third", STEPS=3)
        # the head's one CPU is taken: Ray holds both PENDING and the dashboard shows them provisioning
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for queued in (second, third):
                self.assertEqual(self.ray_status(queued), "PENDING")
                self.assertEqual(self.job(queued["jobId"])["status"], "provisioning")
            time.sleep(0.2)
        # a queued job cancelled: the dashboard asks Ray to stop it, which Ray does once it leaves the queue
        r = self.http.post(f"/api/jobs/{third['jobId']}/cancel", headers=auth_headers())
        self.assertEqual(r.json()["job"]["status"], "cancelled")
        self.assertEqual(self.job(second["jobId"])["status"], "provisioning")

        self.assertEqual(self.signal(first["jobId"], "complete")["status"], "completing")
        first_done = self.wait_status(first["jobId"], "completed", "failed", "cancelled")
        self.assertEqual(first_done["status"], "completed")
        second_done = self.wait_status(second["jobId"], "completed", "failed", "cancelled")
        self.assertEqual((second_done["status"], second_done["exitCode"]), ("completed", 0), second_done)
        self.assertGreaterEqual(second_done["startedAt"], first_done["completedAt"])
        self.assertEqual(self.wait_ray(second, "SUCCEEDED", "FAILED", "STOPPED"), "SUCCEEDED")
        self.assertEqual(self.wait_ray(third, "SUCCEEDED", "FAILED", "STOPPED"), "STOPPED")
        self.assertEqual(self.job(third["jobId"])["status"], "cancelled")
        self.assertFalse(any(line.startswith("fake trainer start") for line in self.log_lines(third["jobId"])))


if __name__ == "__main__":
    unittest.main()
