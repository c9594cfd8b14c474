"""Compute providers behind one interface: where a job's worker runs.

`local` (default) starts `worker_agent.py` as a detached subprocess on this machine; `remote` provisions nothing
and waits for a worker started elsewhere with `worker_agent.py --api-url … --job-id …` to attach through the worker
API; `ray` submits the worker agent as a Ray job (ADR 0017). Cloud providers would implement the same four methods.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from core.manifest import PluginManifest, load_manifest

from ..settings import RAY_MISSING, SettingsError

log = logging.getLogger("tidal.dashboard.providers")

# Variables a worker must never inherit from the server.
_WORKER_ENV_DENY = ("TIDAL_AUTH_TOKEN",)
DEFAULT_RAY_ADDRESS = "http://127.0.0.1:8265"   # `ray start --head`'s job submission (dashboard) address
RAY_ALIVE = ("PENDING", "RUNNING")               # Ray job states in which the worker may still report


def worker_vars(settings, redis_url: str) -> dict:
    """What a worker needs from the server besides its arguments: Redis, the experiments dir, the manifest and the
    timers (never the auth token: a local-mode worker talks to Redis, not to the API)."""
    s = settings
    env = {
        "PYTHONUNBUFFERED": "1", "REDIS_URL": redis_url, "EXPERIMENTS_DIR": str(s.experiments_dir),
        "TIDAL_MANIFEST": str(s.manifest_path), "PYTHON_BIN": s.python_bin,
        "TIDAL_HEARTBEAT_INTERVAL": repr(s.heartbeat_interval),
        "TIDAL_HEARTBEAT_TTL": repr(max(s.heartbeat_timeout, 3 * s.heartbeat_interval)),
        "TIDAL_SIGNAL_POLL_INTERVAL": repr(s.signal_poll_interval), "TIDAL_STOP_GRACE": repr(s.stop_grace),
        "EXTRA_CONFIG_DIRS": os.pathsep.join(str(d) for d in s.extra_config_dirs),
    }
    env.update(s.worker_env)
    for key in _WORKER_ENV_DENY:
        env.pop(key, None)
    return env


def worker_command(settings, job_id: str, redis_url: str) -> list[str]:
    return [settings.python_bin, str(Path(settings.project_root) / "worker_agent.py"), "--job-id", job_id,
            "--redis-url", redis_url]


class ComputeProvider(ABC):
    name: str
    is_remote: bool          # the worker attaches itself (provisioning → starting) instead of being started here
    scheduler = False        # a cluster scheduler: its job status is authoritative in every active state (so the
    #                          monitor asks about running jobs too) and asking it is a network call (off the loop)

    def __init__(self, settings):
        self.settings = settings

    @property
    @abstractmethod
    def startup_timeout(self) -> float:
        """Seconds a job may stay in pending/provisioning/starting before the health monitor fails it."""

    @abstractmethod
    def provision(self, job: dict, redis_url: str) -> dict:
        """Start (or arrange) the job's worker; returns fields to record on the job. Raises on failure."""

    @abstractmethod
    def is_alive(self, job: dict) -> bool | None:
        """Whether the job's worker is alive: True, False, or None when this provider cannot tell."""

    @abstractmethod
    def release(self, job: dict) -> None:
        """Stop the job's worker, if it still runs (after the monitor failed the job)."""

    def end_reason(self, job: dict) -> str | None:
        """Why the worker ended, as the provider saw it, after `is_alive` said False (None: nothing to add)."""
        return None


class LocalProvider(ComputeProvider):
    name, is_remote = "local", False

    def __init__(self, settings):
        super().__init__(settings)
        self._children: dict[str, subprocess.Popen] = {}
        self.host = socket.gethostname()

    @property
    def startup_timeout(self) -> float:
        return self.settings.startup_timeout

    def worker_env(self, redis_url: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in _WORKER_ENV_DENY}
        env.update(worker_vars(self.settings, redis_url))
        return env

    def provision(self, job: dict, redis_url: str) -> dict:
        s = self.settings
        log_dir = s.experiments_dir / ".workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = worker_command(s, job["jobId"], redis_url)
        with open(log_dir / f"{job['jobId']}.log", "ab") as out:
            proc = subprocess.Popen(cmd, cwd=s.project_root, env=self.worker_env(redis_url), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self._children[job["jobId"]] = proc
        return {"workerPid": proc.pid, "host": self.host}

    def _tracked(self, job: dict) -> subprocess.Popen | None:
        return self._children.get(job["jobId"])

    def is_alive(self, job: dict) -> bool | None:
        proc = self._tracked(job)
        if proc is not None:
            alive = proc.poll() is None
            if not alive:
                self._children.pop(job["jobId"], None)
            return alive
        pid, host = job.get("workerPid"), job.get("host")
        if not pid or host != self.host:
            return None
        return _pid_runs_job(pid, job["jobId"])

    def release(self, job: dict) -> None:
        pid = job.get("workerPid")
        if not pid or job.get("host") != self.host or not self.is_alive(job):
            return
        try:  # the worker leads its own process group; its trainer dies with it (PR_SET_PDEATHSIG)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc = self._children.pop(job["jobId"], None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def reap(self) -> int:
        """Collect exited worker processes (no zombies); returns how many of this server's workers still run."""
        for job_id, proc in list(self._children.items()):
            if proc.poll() is not None:
                self._children.pop(job_id, None)
        return len(self._children)


def _pid_runs_job(pid: int, job_id: str) -> bool:
    """True when `pid` is alive AND is the worker of `job_id` (guards against PID reuse after a restart)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return job_id.encode() in cmdline and any(part.endswith(b"worker_agent.py") for part in cmdline)


class RemoteProvider(ComputeProvider):
    """A worker started by hand (or by a cloud hook) on another machine attaches through the worker API."""
    name, is_remote = "remote", True

    @property
    def startup_timeout(self) -> float:
        return self.settings.remote_startup_timeout

    def provision(self, job: dict, redis_url: str) -> dict:
        return {}

    def is_alive(self, job: dict) -> bool | None:
        return None

    def release(self, job: dict) -> None:
        return None


def phase_resources(manifest: PluginManifest, phase_id: str, num_cpus: float | None = None,
                    num_gpus: float | None = None) -> dict:
    """What a job of `phase_id` reserves on Ray: its gpuTier's `minCpuCores` CPUs and one GPU when the tier asks for
    GPU memory (Ray counts devices, not their memory); one CPU and no GPU for a phase that declares nothing.
    `num_cpus`/`num_gpus` (settings RAY_NUM_CPUS/RAY_NUM_GPUS) override the manifest, e.g. 0 GPUs on a CPU cluster."""
    phase = manifest.phase(phase_id)
    tier = manifest.infrastructure.gpuTiers.get(phase.gpuTier) if phase is not None else None
    cpus, gpus = (tier.minCpuCores, 1 if tier.minGpuRamMb > 0 else 0) if tier is not None else (1, 0)
    return {"entrypoint_num_cpus": cpus if num_cpus is None else num_cpus,
            "entrypoint_num_gpus": gpus if num_gpus is None else num_gpus}


class RayProvider(ComputeProvider):
    """Each job is a Ray job (the job submission API) whose entrypoint is the worker agent, with the resources its
    phase asks for: Ray queues it (PENDING) until a node has them, runs it, and stops it on `release`. The worker
    attaches itself like a remote one but talks to Redis directly, so heartbeats, signals, logs and metrics flow as
    for local jobs. Ray ships no code: every node must see this repository (and its venv) and the experiments
    directory at the same paths (a shared filesystem), and reach the Redis URL."""
    name, is_remote, scheduler = "ray", True, True

    def __init__(self, settings):
        super().__init__(settings)
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError:
            raise SettingsError(RAY_MISSING) from None
        self._client_class = JobSubmissionClient
        self._client = None
        self._lock = threading.Lock()
        self._ended: dict[str, str] = {}
        self.address = settings.ray_address or DEFAULT_RAY_ADDRESS
        self.manifest = load_manifest(settings.manifest_path)

    @property
    def startup_timeout(self) -> float:
        # a queued job waits for resources (Ray itself fails a job PENDING for 900 s, RAY_JOB_START_TIMEOUT_SECONDS)
        return self.settings.remote_startup_timeout

    def client(self):
        """The submission client, made on first use: its constructor already calls the cluster."""
        with self._lock:
            if self._client is None:
                self._client = self._client_class(self.address)
            return self._client

    def runtime_env(self, redis_url: str) -> dict:
        # only Tidal's variables travel: the rest of the worker's environment is the Ray node's own
        return {"env_vars": worker_vars(self.settings, redis_url)}

    def entrypoint(self, job: dict, redis_url: str) -> str:
        # exec: the worker is the process Ray signals on stop_job, not a shell in front of it
        root = shlex.quote(str(self.settings.project_root))
        return f"cd {root} && exec {shlex.join(worker_command(self.settings, job['jobId'], redis_url))}"

    @staticmethod
    def submission_id(job: dict) -> str:
        return job.get("raySubmissionId") or f"tidal-{job['jobId']}"

    def provision(self, job: dict, redis_url: str) -> dict:
        s = self.settings
        submission_id = self.client().submit_job(
            entrypoint=self.entrypoint(job, redis_url), submission_id=self.submission_id(job),
            runtime_env=self.runtime_env(redis_url), metadata={"tidalJobId": job["jobId"], "tidalType": job["type"]},
            **phase_resources(self.manifest, job["type"], s.ray_num_cpus, s.ray_num_gpus))
        return {"raySubmissionId": submission_id, "rayAddress": self.address}

    def is_alive(self, job: dict) -> bool | None:
        submission_id = self.submission_id(job)
        try:
            info = self.client().get_job_info(submission_id)
        except Exception as exc:  # cluster unreachable or job unknown: cannot tell; the heartbeat rule still holds
            log.debug("Ray status of %s unavailable: %s", submission_id, exc)
            return None
        status = str(info.status)
        if status in RAY_ALIVE:
            return True
        # Ray's message appends up to 20,000 characters of the job's output: the job log already has them
        message = (info.message or "").strip().split(", last available logs")[0].splitlines()
        self._ended[job["jobId"]] = f"Ray job {submission_id} {status}" + (f": {message[0][:300]}" if message else "")
        return False

    def end_reason(self, job: dict) -> str | None:
        return self._ended.pop(job["jobId"], None)

    def release(self, job: dict) -> None:
        # Ray sends the worker SIGTERM (it stops its trainer) and SIGKILL 3 s later; a PENDING job is stopped as soon
        # as Ray schedules it (its turn in the queue stays: Ray cannot drop a job that has no supervisor yet)
        try:
            self.client().stop_job(self.submission_id(job))
        except Exception as exc:  # already gone (or never submitted)
            log.debug("stopping Ray job %s: %s", self.submission_id(job), exc)


def make_providers(settings) -> dict[str, ComputeProvider]:
    providers: list[ComputeProvider] = [LocalProvider(settings), RemoteProvider(settings)]
    if settings.default_provider == "ray" or settings.ray_address:
        try:
            providers.append(RayProvider(settings))
        except SettingsError:
            if settings.default_provider == "ray":
                raise
            # RAY_ADDRESS is also Ray's own variable: set for something else, it must not stop a local server
            log.warning("RAY_ADDRESS is set but the ray package is missing: no ray provider (%s)", RAY_MISSING)
    return {p.name: p for p in providers}
