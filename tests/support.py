"""Shared test support: real services (Redis, subprocesses) and tiny configs, used by every test suite.

Import as `from tests.support import ...` (the suites run from the project root). The helpers the plugin's own suites
need too (tiny configs, TempDirTestCase, run_python, wait_for) are defined in `plugins.tidal.tests.support` (the
plugin may not import this layer) and re-exported here.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
import unittest
from pathlib import Path
from typing import TYPE_CHECKING

from core.net import free_port
from core.paths import PROJECT_ROOT
from plugins.tidal.tests.support import (  # noqa: F401  (re-exported for tests)
    PYTHON,
    TINY_MODEL,
    TempDirTestCase,
    base_config,
    rl_config,
    run_python,
    tiny_config,
    wait_for,
)
from redis_launcher import EmbeddedRedis

if TYPE_CHECKING:  # imported where used, at run time
    import asyncio

    import httpx


class RedisTestCase(TempDirTestCase):
    """One real redis-server per test class (loopback, free port); each test starts with an empty database."""

    redis_server: EmbeddedRedis

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.redis_server = EmbeddedRedis().start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.redis_server.stop()
        super().tearDownClass()

    def setUp(self) -> None:
        super().setUp()
        import redis

        if not self.redis_server.ping():  # a fault-injection test may have stopped it
            self.redis_server.start()
        self.redis_url = self.redis_server.url
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.redis.flushall()
        self.addCleanup(self.redis.close)


# ---------------------------------------------------------------------------------------------- dashboard server
def dashboard_settings(experiments_dir, redis_url: str, **overrides):
    """Dashboard settings for tests: a temp experiments dir, a known token, and fast timers."""
    from dashboard.server.settings import Settings

    values = dict(redis_url=redis_url, experiments_dir=Path(experiments_dir).resolve(), auth_token=DASHBOARD_TOKEN,
                  heartbeat_interval=0.2, heartbeat_timeout=3.0, signal_poll_interval=0.1, stop_grace=2.0,
                  startup_timeout=20.0, monitor_interval=0.2, sse_ping=1.0)
    values.update(overrides)
    return Settings.from_env({}).with_(**values)


DASHBOARD_TOKEN = "test-token-Secret_123"


class DashboardServer:
    """A real uvicorn serving `create_app(settings)` on a free loopback port, in a thread of this process.

    `url` is ready after `start()`; `services` is the app's service container (to inspect the SSE hub, the health
    monitor …); `call(coro_fn)` runs a coroutine on the server's event loop and returns its result.
    """

    def __init__(self, settings, port: int | None = None):
        import threading

        import uvicorn

        from dashboard.server.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2, lifespan="on",
                                                    proxy_headers=False))
        self.loop: asyncio.AbstractEventLoop | None = None  # the server thread's, once it runs
        self._thread = threading.Thread(target=self._run, name="dashboard-server", daemon=True)

    def _run(self) -> None:
        import asyncio

        self.loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.server.serve())
        finally:  # end what the server left (sse-starlette's shutdown watcher, cancelled readers), then close
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services(self):
        return self.app.state.services

    def start(self, timeout: float = 20.0) -> DashboardServer:
        self._thread.start()
        wait_for(lambda: self.server.started or not self._thread.is_alive(), timeout, message="dashboard start")
        if not self.server.started:
            raise RuntimeError("the dashboard server did not start")
        return self

    def call(self, coro_fn, timeout: float = 10.0):
        import asyncio

        assert self.loop is not None, "the dashboard server has not started"
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            try:  # end open SSE streams first, so shutdown does not wait for (and then cancel) them
                self.call(self.services.hub.close, timeout=5)
            except Exception:
                pass
            self.server.should_exit = True
            self._thread.join(timeout=15)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DashboardProcess:
    """`python -m dashboard` in a child process, as it runs in production (its own interpreter, uvicorn, and the
    embedded Redis when `redis_url` is None), with everything it prints kept in `output()`.

    `env` adds to (or, with None values, removes from) the environment; the token is DASHBOARD_TOKEN unless `env`
    says otherwise. `start()` returns once /api/health answers; `kill()` is a SIGKILL (a crash), `stop()` a SIGTERM.
    """

    def __init__(self, experiments_dir, redis_url: str | None = None, port: int | None = None,
                 env: dict | None = None, args: tuple = (), log_level: str = "info"):
        self.experiments_dir = Path(experiments_dir)
        self.redis_url = redis_url
        self.port = port or free_port()
        self.extra_env = env or {}
        self.args = args
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tidal-dashboard-", suffix=".log", delete=False)
        self._log.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("TIDAL_AUTH_TOKEN", "REDIS_URL", "HOST", "PORT")}
        env.update(TIDAL_AUTH_TOKEN=DASHBOARD_TOKEN, EXPERIMENTS_DIR=str(self.experiments_dir), PYTHONUNBUFFERED="1")
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        for key, value in self.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def start(self, timeout: float = 60.0) -> DashboardProcess:
        with open(self._log.name, "ab") as log:
            self.process = subprocess.Popen(
                [PYTHON, "-m", "dashboard", "--port", str(self.port), "--log-level", self.log_level, *self.args],
                cwd=PROJECT_ROOT, env=self.environment(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        wait_for(lambda: self.process.poll() is not None or http_ok(self.url + "/api/health"), timeout,
                 interval=0.1, message="python -m dashboard to serve")
        if self.process.poll() is not None:
            raise RuntimeError(f"python -m dashboard exited with {self.process.returncode}:\n{self.output()}")
        return self

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (the workers and the embedded Redis are in sessions of their own)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        Path(self._log.name).unlink(missing_ok=True)

    def __enter__(self) -> DashboardProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return "Z" not in f.read().split(")")[-1].split()[0]
    except OSError:
        return False


def kill_job_processes(jobs) -> None:
    """SIGKILL the process groups of the workers (and so their trainers) of these job records, if still alive:
    test clean-up for jobs whose dashboard was killed or stopped before them."""
    import signal

    for job in jobs:
        for pid in (job.get("workerPid"), job.get("childPid")):
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def auth_headers(token: str = DASHBOARD_TOKEN, **extra) -> dict:
    return {"Authorization": f"Bearer {token}", **extra}


class SSEClient:
    """Reads a Server-Sent Events stream in a background thread; events are dicts {event, data, id}.

    `next(timeout)` returns the next event (AssertionError on timeout); `until(pred)` collects events until one
    satisfies `pred` and returns them all; `close()` drops the connection.
    """

    def __init__(self, url: str, headers: dict | None = None, timeout: float = 10.0):
        import queue
        import threading

        import httpx

        self.events: queue.Queue[dict | None] = queue.Queue()
        self.status_code: int | None = None
        self.body: bytes = b""
        self._client = httpx.Client(timeout=httpx.Timeout(timeout, read=None))
        self._response: httpx.Response | None = None
        self._opened = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._read, args=(url, headers or {}), daemon=True)
        self._thread.start()
        if not self._opened.wait(timeout):
            raise AssertionError(f"no SSE response from {url}")

    def _read(self, url: str, headers: dict) -> None:
        event: dict = {}
        data: list[str] = []
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self._response = response
                self.status_code = response.status_code
                if response.status_code != 200:
                    self.body = response.read()
                    self._opened.set()
                    return
                self._opened.set()
                for line in response.iter_lines():
                    if line == "":
                        if data or event:
                            event["data"] = "\n".join(data)
                            self.events.put(event)
                        event, data = {}, []
                    elif line.startswith(":"):
                        continue
                    else:
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "data":
                            data.append(value)
                        elif name in ("event", "id", "retry"):
                            event[name] = value
        except Exception:
            pass
        finally:
            self._opened.set()
            self.events.put(None)

    def next(self, timeout: float = 10.0) -> dict:
        import queue

        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no SSE event within {timeout} s") from None
        if event is None:
            self.events.put(None)
            raise AssertionError("the SSE stream ended")
        return event

    def until(self, predicate, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            event = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(event)
            if predicate(event):
                return seen

    def ended(self, timeout: float = 10.0) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                if self._response is not None:
                    self._response.close()
            except Exception:
                pass
            self._client.close()
            self._thread.join(timeout=5)

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# A stand-in trainer for worker tests: it honours the trainer contract (SIGUSR1 = finish gracefully and exit 0,
# SIGTERM = checkpoint and exit) without a model. Its --config YAML sets STEPS, SLEEP, EXIT_CODE, IGNORE_TERM,
# METRICS and PRINT_ENV.
FAKE_TRAINER = r'''
import os, signal, sys, time
import yaml
args = sys.argv[1:]
config = yaml.safe_load(open(args[args.index("--config") + 1])) if "--config" in args else {}
state = {"complete": False, "term": False}
def on_usr1(signum, frame):
    state["complete"] = True
def on_term(signum, frame):
    if not config.get("IGNORE_TERM"):
        state["term"] = True
signal.signal(signal.SIGUSR1, on_usr1)
signal.signal(signal.SIGTERM, on_term)
print("fake trainer start", " ".join(args), "experiment", os.environ.get("TIDAL_EXPERIMENT_ID"), flush=True)
print("token visible:", "TIDAL_AUTH_TOKEN" in os.environ, flush=True)
if config.get("PRINT_ENV"):  # security tests read the trainer's whole environment from the job log
    for key in sorted(os.environ):
        print(f"env {key}={os.environ[key]}", flush=True)
logger = None
if config.get("METRICS"):
    from MetricsLogger import MetricsLogger
    root = os.environ["EXPERIMENTS_DIR"]
    logger = MetricsLogger(os.path.join(root, os.environ["TIDAL_EXPERIMENT_ID"]))
for step in range(int(config.get("STEPS", 5))):
    if state["complete"]:
        print("complete requested: finishing step", step, flush=True)
        if logger: logger.finalize("completed")
        sys.exit(0)
    if state["term"]:
        print("terminated: checkpointing", flush=True)
        if logger: logger.finalize("stopped")
        sys.exit(143)
    print(f"step {step}", flush=True)
    print(f"warn {step}", file=sys.stderr, flush=True)
    if logger: logger.log_metrics({"Losses/Total": 10.0 / (step + 1)}, step)
    time.sleep(float(config.get("SLEEP", 0.05)))
if logger: logger.finalize("completed" if int(config.get("EXIT_CODE", 0)) == 0 else "failed")
print("done", flush=True)
sys.exit(int(config.get("EXIT_CODE", 0)))
'''


def fake_plugin(root, **phase_overrides) -> Path:
    """A copy of the tidal manifest in `root` with an extra `fake-training` phase running FAKE_TRAINER (a module
    in `root`, put on PYTHONPATH by the caller), and `root/configs/` for its configs. Returns the manifest path."""
    import yaml as _yaml

    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "fake_trainer.py").write_text(FAKE_TRAINER)
    manifest = _yaml.safe_load((PROJECT_ROOT / "plugins" / "tidal" / "manifest.yaml").read_text())
    phase = {"id": "fake-training", "displayName": "Fake training", "entrypoint": "fake_trainer",
             "configFiles": ["configs/fake.yaml"], "args": {"config": "--config"}, "required": ["config"],
             "concurrency": 1, "gpuTier": "standard"}
    phase.update(phase_overrides)
    manifest["trainingPhases"].append(phase)
    path = root / "manifest.yaml"
    path.write_text(_yaml.safe_dump(manifest, sort_keys=False))
    return path


def write_fake_config(root, name: str = "fake.yaml", **values) -> Path:
    import yaml as _yaml

    path = Path(root) / "configs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_yaml.safe_dump({"STEPS": 5, "SLEEP": 0.05, **values}))
    return path


def http_ok(url: str) -> bool:
    """True when GET `url` answers 200 within a second (a server is up and serving)."""
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------------------------------------- tiny experiments
def write_tiny_experiment(root, experiment_id: str, steps: int = 100, status: str | None = "completed",
                          checkpoint: bool = False) -> Path:
    """A real LM experiment under `root`: metadata.json, `steps` metric records written by the real MetricsLogger
    (disk only), its status ("completed"/"failed"/"stopped" finalize it; None or "training" leave it training), and
    with `checkpoint` a tiny real model's weights and config.yaml (`transformer-lm_v1.0.0.pth`, for generation)."""
    import json as _json

    from MetricsLogger import MetricsLogger

    exp_dir = Path(root) / experiment_id
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "metadata.json").write_text(_json.dumps({"type": "lm", "created_at": time.time()}))
    logger = MetricsLogger(exp_dir, redis_url="")
    for step in range(steps):
        logger.log_metrics({"Losses/Total": 5.0 - step / max(steps, 1), "Learning Rate": 1e-3}, step)
    if status in ("completed", "failed", "stopped"):
        logger.finalize(status)
    else:
        logger.close()
    if checkpoint:
        import torch
        import yaml as _yaml

        from plugins.tidal.TransformerLM import TransformerLM

        config = tiny_config()
        torch.manual_seed(0)
        model = TransformerLM(config["VOCAB_SIZE"], config)
        (exp_dir / "config.yaml").write_text(_yaml.safe_dump(config))
        torch.save(model.state_dict(), exp_dir / "transformer-lm_v1.0.0.pth")
    return exp_dir


# ---------------------------------------------------------------------------------------------- MCP
def run_mcp(mcp_server, scenario):
    """Run `await scenario(client)` against an in-memory MCP client session of `mcp_server` (no subprocess, no
    port) and return its result."""
    import anyio
    from mcp import Client

    async def main():
        async with Client(mcp_server) as client:
            return await scenario(client)

    return anyio.run(main)


def mcp_call(mcp_server, tool: str, arguments: dict | None = None):
    """One tool call through a fresh in-memory MCP session; returns the CallToolResult."""
    return run_mcp(mcp_server, lambda client: client.call_tool(tool, arguments or {}))


def mcp_text(result) -> str:
    """The text content of a tool result (an error's message)."""
    return " ".join(getattr(block, "text", "") for block in result.content)


class LiveDashboardTestCase(unittest.TestCase):
    """One real Redis and one real dashboard (uvicorn on a free port) per test class, over a fresh experiments dir.

    Subclasses fill the directory in `populate(root)` and may set `settings_overrides`; tests use `cls.http`
    (an httpx client on the server), `cls.server`, `cls.redis`, `cls.root` and `cls.tmp`."""

    settings_overrides: dict = {}
    server: DashboardServer  # set by setUpClass

    @classmethod
    def populate(cls, root: Path) -> None:
        """Write the experiments the class needs under `root` (default: none)."""

    @classmethod
    def setUpClass(cls):
        import httpx

        super().setUpClass()
        cls._dir = tempfile.TemporaryDirectory(prefix="tidal-dashboard-")
        cls.tmp = Path(cls._dir.name)
        cls.root = cls.tmp / "experiments"
        cls.root.mkdir()
        cls.populate(cls.root)
        cls.redis = EmbeddedRedis().start()
        settings = dashboard_settings(cls.root, cls.redis.url, **{"rate_capacity": 10_000, **cls.settings_overrides})
        cls.server = DashboardServer(settings).start()
        cls.http = httpx.Client(base_url=cls.server.url, timeout=60)

    @classmethod
    def tearDownClass(cls):
        cls.http.close()
        cls.server.stop()
        cls.redis.stop()
        cls._dir.cleanup()
        super().tearDownClass()
