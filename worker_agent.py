"""Run one dashboard job: `python worker_agent.py --job-id ID [--redis-url URL | --api-url URL]`.

The worker reads the job, pre-assigns its experiment id, builds the trainer command from the manifest phase
(`[PYTHON_BIN, -m, <entrypoint>, --config <confined path>, …]`), spawns it in its own process group with a filtered
environment, and then, until the trainer exits:
- streams its stdout/stderr lines to `tidal:logs:<jobId>` (capped list) and the jobs stream (live);
- heartbeats every `--heartbeat-interval` s (default 10) to `tidal:worker:<jobId>:heartbeat` (with a TTL);
- polls the control signal every `--poll-interval` s (default 2): `complete` → SIGUSR1 to the trainer's group
  (finish the step, checkpoint, exit 0); `stop` → SIGTERM, then SIGKILL after `--stop-grace` s (default 30).
Exit 0 → completed; a requested stop → cancelled; otherwise failed with the exit code and the last stderr lines.

Transports: local mode talks to Redis directly (the same Lua scripts as the server, so the same state machine);
remote mode (`--api-url`, token from `--auth-token` or better env TIDAL_AUTH_TOKEN, which `ps` does not show) goes
through the server's bearer-authenticated worker API and forwards the trainer's metric files to it.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from core import jobs as jobs_core
from core.env import env_number
from core.errors import ConfigError, TidalError
from core.io import read_jsonl_since
from core.jobs import JOB_ID_RE
from core.manifest import ARG_SOURCES, DEFAULT_MANIFEST_PATH, PluginManifest, load_manifest
from core.paths import PROJECT_ROOT, resolve_config_path, resolve_experiment_path
from experiment_utils import experiments_root as default_experiments_root
from experiment_utils import make_experiment_id, make_unique_dir

# The trainer's environment is built from this allowlist only: never the auth token or other secrets.
ENV_ALLOW = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "TMPDIR",
             "PYTHONPATH", "PYTHONHASHSEED", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "HF_HOME", "HF_DATASETS_CACHE",
             "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TORCH_HOME", "XDG_CACHE_HOME", "REDIS_URL",
             "EXPERIMENTS_DIR", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "TOKENIZERS_PARALLELISM", "METRICS_REDIS_PREFIX"}
ENV_ALLOW_PREFIXES = ("CUDA_", "NVIDIA_", "NCCL_", "TORCH_", "TORCHINDUCTOR_", "KMP_", "GOMP_")
ENV_DENY = {"TIDAL_AUTH_TOKEN"}

LOG_LINE_MAX = 4000           # characters kept of one output line
LOG_BATCH_BYTES = 32 * 1024   # one log write/POST stays well under the server's 64 KiB body limit
STDERR_TAIL = 20


def filtered_env(source: Mapping[str, str], extra: dict) -> dict:
    env = {k: v for k, v in source.items()
           if (k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)) and k not in ENV_DENY}
    env.update({k: v for k, v in extra.items() if v is not None})
    for k in ENV_DENY:
        env.pop(k, None)
    return env


def _set_parent_death_signal() -> None:
    """In the child, before exec: die with SIGTERM if the worker dies (even by SIGKILL), so no trainer is orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------ transports
class Transport(ABC):
    @abstractmethod
    def get_job(self) -> dict | None: ...

    @abstractmethod
    def transition(self, target: str | None, patch: dict | None = None) -> tuple[bool, dict | None]:
        """(applied, job). target None = patch fields only. Not applied when illegal (e.g. cancelled)."""

    @abstractmethod
    def heartbeat(self) -> None: ...

    @abstractmethod
    def pop_signal(self) -> str | None: ...

    @abstractmethod
    def send_logs(self, records: list[dict]) -> None: ...

    def send_metrics(self, experiment_id: str, records: list[dict]) -> None:
        """Remote mode only: forward metric records the trainer wrote to disk. An optional hook, deliberately not
        abstract: a transport that does not forward metrics (forwards_metrics False) keeps this no-op."""
        return None

    forwards_metrics = False

    def close(self) -> None:
        """Release the transport's connections; an optional hook whose default has nothing to release."""
        return None


class RedisTransport(Transport):
    def __init__(self, job_id: str, redis_url: str, manifest: PluginManifest, heartbeat_ttl: float):
        import redis

        self.job_id = job_id
        self.keys = manifest.redis
        self.heartbeat_ttl = heartbeat_ttl
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5,
                                          socket_connect_timeout=5)
        self._transition = self.redis.register_script(jobs_core.TRANSITION_LUA)

    def get_job(self) -> dict | None:
        raw = self.redis.hget(self.keys.jobsHash, self.job_id)
        return json.loads(raw) if raw else None

    def transition(self, target, patch=None):
        keys, args = jobs_core.transition_call(self.keys, self.job_id, target, patch, time.time())
        result = jobs_core.parse_transition(self._transition(keys=keys, args=args))
        return result.ok, result.job

    def heartbeat(self) -> None:
        self.redis.set(self.keys.heartbeat(self.job_id), repr(time.time()), px=int(self.heartbeat_ttl * 1000))

    def pop_signal(self) -> str | None:
        # redis-py types a reply as bytes | str whatever the client; decode_responses=True makes this one a str
        return cast("str | None", self.redis.getdel(self.keys.signal(self.job_id)))

    def send_logs(self, records: list[dict]) -> None:
        pipe = self.redis.pipeline(transaction=True)
        jobs_core.queue_log_append(pipe, self.keys, self.job_id, records)
        pipe.execute()

    def close(self) -> None:
        self.redis.close()


class HttpError(RuntimeError):
    pass


class HttpTransport(Transport):
    """The server's worker API: /api/workers/{jobId}/… with `Authorization: Bearer <token>`."""
    forwards_metrics = True

    def __init__(self, job_id: str, api_url: str, token: str):
        import httpx

        self.job_id = job_id
        self.client = httpx.Client(base_url=api_url.rstrip("/"), timeout=15.0,
                                   headers={"Authorization": f"Bearer {token}", "User-Agent": "TidalWorker/1.0"})

    def _call(self, method: str, path: str, body=None, ok=(200, 201)):
        response = self.client.request(method, path, json=body)
        if response.status_code not in ok:
            raise HttpError(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def get_job(self) -> dict | None:
        response = self._call("GET", f"/api/jobs/{self.job_id}", ok=(200, 404))
        return response.json().get("job") if response.status_code == 200 else None

    def transition(self, target, patch=None):
        if target is None:  # the only field a worker sets without a status change is its experiment id
            path, body = f"/api/workers/{self.job_id}/experiment-id", {"experimentId": (patch or {})["experimentId"]}
        else:
            path, body = f"/api/workers/{self.job_id}/status", {**(patch or {}), "status": target}
        response = self._call("PATCH", path, body, ok=(200, 409))
        return response.status_code == 200, response.json().get("job")

    def heartbeat(self) -> None:
        self._call("POST", f"/api/workers/{self.job_id}/heartbeat")

    def pop_signal(self) -> str | None:
        return self._call("GET", f"/api/workers/{self.job_id}/signal").json().get("signal")

    def send_logs(self, records: list[dict]) -> None:
        self._call("POST", f"/api/workers/{self.job_id}/logs", {"lines": records})

    def send_metrics(self, experiment_id: str, records: list[dict]) -> None:
        self._call("POST", f"/api/workers/{self.job_id}/metrics", {"experimentId": experiment_id,
                                                                    "records": records})

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------------ metrics forwarding
class MetricsForwarder:
    """Remote mode: tail the trainer's metric files and forward new records (the trainer has no Redis there)."""

    def __init__(self, exp_dir: Path, manifest: PluginManifest):
        lm = manifest.metrics.lm
        self.files = {"metrics": exp_dir / lm.directory / lm.historyFile,
                      "rl-metrics": exp_dir / lm.directory / manifest.metrics.rl.historyFile}
        self.status_file = exp_dir / lm.directory / lm.statusFile
        self.offsets = {kind: 0 for kind in self.files}
        self.status_mtime = 0.0

    def collect(self, limit_bytes: int = LOG_BATCH_BYTES // 2) -> list[dict]:
        out = []
        for kind, path in self.files.items():
            try:  # only complete lines: the trainer may be mid-write
                records, self.offsets[kind] = read_jsonl_since(path, self.offsets[kind], max_bytes=limit_bytes)
            except OSError:
                continue
            out += [{"kind": kind, "data": record} for record in records]
        try:
            mtime = self.status_file.stat().st_mtime
            if mtime != self.status_mtime:
                out.append({"kind": "status", "data": json.loads(self.status_file.read_text())})
                self.status_mtime = mtime
        except (OSError, ValueError):
            pass
        return out


# ------------------------------------------------------------------------------------------------ the agent
class WorkerAgent:
    def __init__(self, job_id: str, transport: Transport, manifest: PluginManifest, *, manifest_dir: Path,
                 python_bin: str, experiments_root: Path, config_dirs: tuple[Path, ...], redis_url: str | None,
                 heartbeat_interval: float, poll_interval: float, stop_grace: float, out=sys.stdout):
        self.job_id = job_id
        self.transport = transport
        self.manifest = manifest
        self.manifest_dir = manifest_dir
        self.python_bin = python_bin
        self.experiments_root = experiments_root
        self.config_dirs = config_dirs
        self.redis_url = redis_url
        self.heartbeat_interval = heartbeat_interval
        self.poll_interval = poll_interval
        self.stop_grace = stop_grace
        self.out = out
        self.lines: queue.Queue = queue.Queue()
        self.stderr_tail: collections.deque = collections.deque(maxlen=STDERR_TAIL)
        self.stop_event = threading.Event()
        self.terminated_by: int | None = None   # a signal the worker itself received

    def say(self, message: str) -> None:
        print(f"[worker {self.job_id}] {message}", file=self.out, flush=True)

    # ---- preparation
    def build_command(self, job: dict) -> tuple[list[str], str, Path]:
        """(argv, experiment id, experiment dir); raises TidalError (incl. PathRejected) for a bad job."""
        phase = self.manifest.phase(job.get("type", ""))
        if phase is None:
            raise TidalError(f"unknown job type {job.get('type')!r}")
        config = job.get("config") or {}
        values: dict[str, object] = {}
        for name in phase.args:
            raw = config.get(ARG_SOURCES[name])
            if raw is None:
                continue
            if name in ("config", "rlConfig"):
                raw = str(resolve_config_path(ARG_SOURCES[name], raw, plugin_dir=self.manifest_dir,
                                              project_root=PROJECT_ROOT, allowed_dirs=self.config_dirs))
            elif name == "checkpoint":
                raw = str(resolve_experiment_path("checkpoint", raw, experiments_root=self.experiments_root,
                                                  kind="checkpoint"))
            elif name == "resume":
                kind = "dir" if phase.id == "lm-training" else "checkpoint"
                raw = str(resolve_experiment_path("resumeExpDir", raw, experiments_root=self.experiments_root,
                                                  kind=kind))
            values[name] = raw
        missing = [n for n in phase.required if n not in values]
        if missing:
            raise TidalError(f"job lacks required {', '.join(ARG_SOURCES[m] for m in missing)}")
        if job.get("experimentId"):
            exp_id = job["experimentId"]
        elif values.get("resume") and Path(str(values["resume"])).is_dir():
            exp_id = Path(str(values["resume"])).name
        else:
            rl_config = values.get("rlConfig")  # the config paths in `values` are resolved path strings
            exp_id = self._claim_experiment_id(make_experiment_id(
                str(values["config"]), None if rl_config is None else str(rl_config)))
        argv = [self.python_bin, "-m", phase.entrypoint, *phase.build_args(values)]
        return argv, exp_id, self.experiments_root / exp_id

    def _claim_experiment_id(self, base: str) -> str:
        """Create the experiment directory exclusively (two runs of one config in the same second get `-2`, …)."""
        return make_unique_dir(self.experiments_root, base).name

    def child_env(self, exp_id: str) -> dict:
        return filtered_env(os.environ, {
            "PYTHONUNBUFFERED": "1", "TIDAL_EXPERIMENT_ID": exp_id, "TIDAL_JOB_ID": self.job_id,
            "EXPERIMENTS_DIR": str(self.experiments_root), "REDIS_URL": self.redis_url})

    # ---- threads
    def _pump(self, pipe, stream: str) -> None:
        for raw in iter(pipe.readline, ""):
            line = raw.rstrip("\r\n")[:LOG_LINE_MAX]
            if stream == "stderr":
                self.stderr_tail.append(line)
            self.lines.put(jobs_core.log_record(stream, line, time.time()))
        pipe.close()

    def _heartbeats(self) -> None:
        warned = False
        while not self.stop_event.is_set():
            try:
                self.transport.heartbeat()
                warned = False
            except Exception as exc:
                if not warned:
                    self.say(f"heartbeat failed: {exc}")
                    warned = True
            self.stop_event.wait(self.heartbeat_interval)

    def _flush_logs(self) -> None:
        batch, size = [], 0
        while True:
            try:
                record = self.lines.get_nowait()
            except queue.Empty:
                break
            batch.append(record)
            size += len(record["line"]) + 64
            if size >= LOG_BATCH_BYTES:
                self._send_logs(batch)
                batch, size = [], 0
        if batch:
            self._send_logs(batch)

    def _send_logs(self, batch: list[dict]) -> None:
        try:
            self.transport.send_logs(batch)
        except Exception as exc:  # logs are best effort; the trainer's own log file keeps everything
            self.say(f"could not send {len(batch)} log lines: {exc}")

    # ---- main
    def _safe_transition(self, target, patch=None) -> tuple[bool, dict | None]:
        for attempt in range(5):
            try:
                return self.transport.transition(target, patch)
            except Exception as exc:
                self.say(f"recording status {target} failed ({exc}); retrying")
                time.sleep(min(2 ** attempt, 10))
        return False, None

    def run(self) -> int:
        job = self.transport.get_job()
        if job is None:
            self.say("job not found")
            return 1
        if job["status"] in jobs_core.TERMINAL:
            self.say(f"job is already {job['status']}; nothing to do")
            return 0
        # a remote worker attaches itself: provisioning -> starting
        if job["status"] in ("pending", "provisioning"):
            ok, job = self._safe_transition("starting", {"host": socket.gethostname(), "workerPid": os.getpid()})
            if not ok or job is None:  # an applied transition always answers the job
                return 0
        try:
            argv, exp_id, exp_dir = self.build_command(job)
        except (TidalError, OSError) as exc:
            self._safe_transition("failed", {"error": f"invalid job: {exc}"})
            self.say(f"invalid job: {exc}")
            return 1
        ok, job = self._safe_transition(None, {"experimentId": exp_id})
        if not ok:
            self.say("job was ended before it started")
            return 0
        self.say(f"running {' '.join(argv)} (experiment {exp_id})")
        try:
            child = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=self.child_env(exp_id), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                                     bufsize=1, start_new_session=True, preexec_fn=_set_parent_death_signal)
        except OSError as exc:
            self._safe_transition("failed", {"error": f"could not start the trainer: {exc}"})
            return 1
        ok, job = self._safe_transition("running", {"childPid": child.pid, "command": " ".join(argv[1:])})
        if not ok:  # cancelled while starting
            self._kill_group(child, signal.SIGKILL)
            child.wait()
            return 0
        return self._supervise(child, exp_id, exp_dir)

    def _kill_group(self, child: subprocess.Popen, sig: int) -> None:
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _supervise(self, child: subprocess.Popen, exp_id: str, exp_dir: Path) -> int:
        pumps = [threading.Thread(target=self._pump, args=(child.stdout, "stdout"), daemon=True),
                 threading.Thread(target=self._pump, args=(child.stderr, "stderr"), daemon=True)]
        beat = threading.Thread(target=self._heartbeats, daemon=True)
        for t in (*pumps, beat):
            t.start()
        forwarder = MetricsForwarder(exp_dir, self.manifest) if self.transport.forwards_metrics else None
        stop_requested, kill_at, killed = None, None, False
        next_poll = time.monotonic()
        tick = min(0.25, self.poll_interval)
        while True:
            rc = child.poll()
            self._flush_logs()
            if forwarder is not None:
                self._forward_metrics(forwarder, exp_id)
            if rc is not None:
                break
            now = time.monotonic()
            if self.terminated_by is not None and stop_requested is None:
                stop_requested = "worker-signal"
                self._kill_group(child, signal.SIGTERM)
                kill_at = now + self.stop_grace
            if now >= next_poll:
                next_poll = now + self.poll_interval
                signal_name = self._poll_signal()
                if signal_name == "complete" and stop_requested is None:
                    self.say("complete requested: SIGUSR1 to the trainer")
                    self._safe_transition("completing")
                    self._kill_group(child, signal.SIGUSR1)
                elif signal_name == "stop" and stop_requested is None:
                    self.say(f"stop requested: SIGTERM to the trainer, SIGKILL after {self.stop_grace:g} s")
                    stop_requested = "user"
                    self._safe_transition("stopping")
                    self._kill_group(child, signal.SIGTERM)
                    kill_at = now + self.stop_grace
            if kill_at is not None and not killed and now >= kill_at:
                self.say("grace period over: SIGKILL")
                self._kill_group(child, signal.SIGKILL)
                killed = True
            time.sleep(tick)
        for t in pumps:
            t.join(timeout=5)
        self._flush_logs()
        if forwarder is not None:
            self._forward_metrics(forwarder, exp_id)
        self.stop_event.set()
        beat.join(timeout=5)
        return self._finish(rc, stop_requested, killed)

    def _poll_signal(self) -> str | None:
        try:
            return self.transport.pop_signal()
        except Exception as exc:
            self.say(f"signal poll failed: {exc}")
            return None

    def _forward_metrics(self, forwarder: MetricsForwarder, exp_id: str) -> None:
        try:
            records = forwarder.collect()
            if records:
                self.transport.send_metrics(exp_id, records)
        except Exception as exc:
            self.say(f"metrics forwarding failed: {exc}")

    def _finish(self, rc: int, stop_requested: str | None, killed: bool) -> int:
        patch: dict = {"exitCode": rc}
        if stop_requested == "user":
            patch["error"] = "stopped by user" + (" (killed after the grace period)" if killed else "")
            target = "cancelled"
        elif stop_requested == "worker-signal" or (self.terminated_by is not None and rc != 0):
            # a signal to the whole job (Ray's stop_job, a killpg) can end the trainer before this loop saw it
            patch["error"] = f"worker terminated by signal {self.terminated_by}"
            target = "failed"
        elif rc == 0:
            target = "completed"
        else:
            reason = (f"killed by signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals()
                      else f"exited with code {rc}")
            tail = "\n".join(self.stderr_tail)
            patch["error"] = f"trainer {reason}" + (f"\n{tail}" if tail else "")
            target = "failed"
        ok, job = self._safe_transition(target, patch)
        final = job.get("status") if job else target
        self.say(f"trainer exited with {rc}; job {final}")
        return 0 if final == "completed" else 1


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--job-id", required=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--redis-url", help="local mode (default: env REDIS_URL)")
    mode.add_argument("--api-url", help="remote mode: the dashboard's base URL")
    p.add_argument("--auth-token", help="remote mode bearer token (prefer env TIDAL_AUTH_TOKEN: not shown by ps)")
    p.add_argument("--manifest", default=os.environ.get("TIDAL_MANIFEST") or str(DEFAULT_MANIFEST_PATH))
    p.add_argument("--python-bin", default=os.environ.get("PYTHON_BIN") or sys.executable)
    env = os.environ
    p.add_argument("--heartbeat-interval", type=float, default=env_number(env, "TIDAL_HEARTBEAT_INTERVAL", 10.0))
    p.add_argument("--heartbeat-ttl", type=float, default=env_number(env, "TIDAL_HEARTBEAT_TTL", 60.0))
    p.add_argument("--poll-interval", type=float, default=env_number(env, "TIDAL_SIGNAL_POLL_INTERVAL", 2.0))
    p.add_argument("--stop-grace", type=float, default=env_number(env, "TIDAL_STOP_GRACE", 30.0))
    return p.parse_args(argv)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except ConfigError as exc:  # a TIDAL_* number in the environment that is not one
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not JOB_ID_RE.match(args.job_id):
        print(f"error: invalid job id {args.job_id!r}", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.manifest)
    except TidalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    experiments_root = default_experiments_root().resolve()
    config_dirs = ((Path(args.manifest).resolve().parent / "configs").resolve(),
                   *(Path(p).resolve() for p in os.environ.get("EXTRA_CONFIG_DIRS", "").split(os.pathsep) if p))
    # with --api-url this worker forwards the trainer's metric files, so the trainer is told to publish nothing
    # itself (an empty REDIS_URL: it would otherwise find a dashboard's Redis announced next to its experiments)
    redis_url = ""
    if args.api_url:
        token = args.auth_token or os.environ.get("TIDAL_AUTH_TOKEN")
        if not token:
            print("error: --api-url needs a token: set TIDAL_AUTH_TOKEN (or pass --auth-token)", file=sys.stderr)
            return 2
        transport: Transport = HttpTransport(args.job_id, args.api_url, token)
    else:
        redis_url = args.redis_url or os.environ.get("REDIS_URL", "")
        if not redis_url:
            print("error: pass --redis-url, --api-url, or set REDIS_URL", file=sys.stderr)
            return 2
        transport = RedisTransport(args.job_id, redis_url, manifest, args.heartbeat_ttl)
    agent = WorkerAgent(args.job_id, transport, manifest, manifest_dir=Path(args.manifest).resolve().parent,
                        python_bin=args.python_bin, experiments_root=experiments_root, config_dirs=config_dirs,
                        redis_url=redis_url, heartbeat_interval=args.heartbeat_interval,
                        poll_interval=args.poll_interval, stop_grace=args.stop_grace)

    def on_signal(signum, frame):  # stop the trainer cleanly, then exit through the normal path
        agent.terminated_by = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return agent.run()
    finally:
        transport.close()


if __name__ == "__main__":
    sys.exit(main())
