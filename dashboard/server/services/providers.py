"""Compute providers behind one interface: where a job's worker runs.

`local` (default) starts `worker_agent.py` as a detached subprocess on this machine; `remote` provisions nothing
and waits for a worker started elsewhere with `worker_agent.py --api-url … --job-id …` to attach through the worker
API. Cloud providers would implement the same four methods.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path

log = logging.getLogger("tidal.dashboard.providers")

# Variables a local worker must never inherit from the server.
_WORKER_ENV_DENY = ("TIDAL_AUTH_TOKEN",)


class ComputeProvider(ABC):
    name: str
    is_remote: bool

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
        s = self.settings
        env = {k: v for k, v in os.environ.items() if k not in _WORKER_ENV_DENY}
        env.update({
            "PYTHONUNBUFFERED": "1", "REDIS_URL": redis_url, "EXPERIMENTS_DIR": str(s.experiments_dir),
            "TIDAL_MANIFEST": str(s.manifest_path), "PYTHON_BIN": s.python_bin,
            "TIDAL_HEARTBEAT_INTERVAL": repr(s.heartbeat_interval),
            "TIDAL_HEARTBEAT_TTL": repr(max(s.heartbeat_timeout, 3 * s.heartbeat_interval)),
            "TIDAL_SIGNAL_POLL_INTERVAL": repr(s.signal_poll_interval), "TIDAL_STOP_GRACE": repr(s.stop_grace),
            "EXTRA_CONFIG_DIRS": os.pathsep.join(str(d) for d in s.extra_config_dirs),
        })
        env.update(s.worker_env)
        return env

    def provision(self, job: dict, redis_url: str) -> dict:
        s = self.settings
        log_dir = s.experiments_dir / ".workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        cmd = [s.python_bin, str(Path(s.project_root) / "worker_agent.py"), "--job-id", job["jobId"],
               "--redis-url", redis_url]
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


def make_providers(settings) -> dict[str, ComputeProvider]:
    return {p.name: p for p in (LocalProvider(settings), RemoteProvider(settings))}
