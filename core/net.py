"""Loopback networking shared by the layers: a free port, probing a Redis, and the announcement of the Redis URL.

A running dashboard announces the Redis it reads in `<experiments>/.redis_url` (`announce_redis_url`), so a run
started from the command line with REDIS_URL unset publishes its metrics live there (`discover_redis_url`).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from core.names import REDIS_ANNOUNCE_FILE

ANNOUNCE_PROBE_TIMEOUT_S = 0.3   # a run's start-up pays at most this for a stale announcement


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
    path = Path(experiments_dir) / REDIS_ANNOUNCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{REDIS_ANNOUNCE_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"url": url, "pid": os.getpid()}, f)
    os.replace(tmp, path)
    return path


def withdraw_redis_url(experiments_dir: str | os.PathLike, url: str) -> None:
    """Remove the announcement if it is still this process's `url` (a newer dashboard may have replaced it)."""
    path = Path(experiments_dir) / REDIS_ANNOUNCE_FILE
    if _read_announcement(path) == {"url": url, "pid": os.getpid()}:
        try:
            path.unlink(missing_ok=True)
        except OSError:  # left behind, it is recognised as stale: nothing answers on its port any more
            pass


def discover_redis_url(experiments_dir: str | os.PathLike) -> str | None:
    """The Redis URL a dashboard announced for this experiments directory, when a Redis answers there; None when
    there is no announcement or it is stale (the dashboard and its Redis are gone)."""
    url = (_read_announcement(Path(experiments_dir) / REDIS_ANNOUNCE_FILE) or {}).get("url")
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
