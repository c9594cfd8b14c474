"""The MCP server's lazy disk cache (decision and numbers: research/adrs/0013-mcp-lazy-disk-cache.md).

Only GETs under `/api/experiments/{id}/…` are ever served from or written to disk, and only for an experiment
this process KNOWS to be completed. It learns that from the answers it sees pass by: the list
(`{"experiments": [{"id", "status"}]}`, status a string) and the status endpoint (`{"experimentId", "status":
{"status": …}}`, or a bare string, or null). An experiment seen in any other state is forgotten and its files are
removed (a resumed run must not be answered from its old files). When nothing is known about an experiment yet,
one status request settles it. Lists, jobs, plugins, POSTs, errors, status answers themselves and "nothing yet"
answers (`results` or `metrics` null: a later evaluation or ablation may still write them) are never stored.

Files: `<dir>/<sha256(experiment id)[:16]>/<sha256(key)>.json` holding `{"key": key, "body": body}`; the key is
base URL + path + sorted query, and a file whose stored key differs (a collision) or that does not parse is a miss
(and is rewritten). A failed write is logged once and the answer passes through.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

log = logging.getLogger("tidal.mcp.cache")

EXPERIMENT_PATH = re.compile(r"^/api/experiments/(?P<id>[^/]+)/(?P<resource>[^/]+)$")
LIST_PATH = "/api/experiments"
COMPLETED = "completed"
NOT_CACHED = {"status", "stream"}      # the source of truth for completion, and the live SSE stream
Fetch = Callable[[str, dict[str, Any]], Awaitable[Any]]


def default_cache_dir() -> Path:
    return Path(os.environ.get("TIDAL_CACHE_DIR") or Path.home() / ".cache" / "tidal")


def cache_key(base_url: str, path: str, params: dict[str, Any] | None) -> str:
    query = urlencode(sorted((str(k), str(v)) for k, v in (params or {}).items() if v is not None))
    return f"{base_url.rstrip('/')}{path}?{query}"


def _status_word(value: Any) -> str | None:
    """The status string out of either shape: a bare string, or a status record {"status": …}."""
    if isinstance(value, dict):
        value = value.get("status")
    return value if isinstance(value, str) else None


def _is_absence(body: Any) -> bool:
    """`{"results": null}` / `{"metrics": null}`: "nothing yet", which an evaluation or ablation run may still fill."""
    return isinstance(body, dict) and any(k in body and body[k] is None for k in ("results", "metrics"))


class DiskCache:
    """Wraps a GET fetcher: `await cache.get(base_url, path, params, fetch)` returns the body, from disk when allowed.

    Counters `hits`, `misses` (a cacheable request that went to the network) and `writes` are for tests and figures.
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.completed: dict[str, bool] = {}   # experiment id -> known completed (True) / known not (False)
        self.hits = self.misses = self.writes = 0
        self._write_warned = False

    # ------------------------------------------------------------------------------------------------ learning
    def observe(self, path: str, body: Any) -> None:
        """Learn completion from a list or status answer (any other answer teaches nothing)."""
        if path == LIST_PATH and isinstance(body, dict) and isinstance(body.get("experiments"), list):
            for experiment in body["experiments"]:
                if isinstance(experiment, dict) and isinstance(experiment.get("id"), str):
                    self._learn(experiment["id"], _status_word(experiment.get("status")))
            return
        match = EXPERIMENT_PATH.match(path)
        if match and match["resource"] == "status" and isinstance(body, dict):
            self._learn(match["id"], _status_word(body.get("status")))

    def _learn(self, experiment_id: str, status: str | None) -> None:
        done = status == COMPLETED
        if not done and self.completed.get(experiment_id, True):
            self._forget(experiment_id)
        self.completed[experiment_id] = done

    def _forget(self, experiment_id: str) -> None:
        shutil.rmtree(self._experiment_dir(experiment_id), ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ the wrapper
    async def get(self, base_url: str, path: str, params: dict[str, Any], fetch: Fetch) -> Any:
        match = EXPERIMENT_PATH.match(path)
        if match is None or match["resource"] in NOT_CACHED:
            body = await fetch(path, params)
            self.observe(path, body)
            return body
        experiment_id = match["id"]
        if experiment_id not in self.completed:
            # nothing known yet (a fresh process): one status request decides (errors propagate: nothing cached)
            status_path = f"/api/experiments/{experiment_id}/status"
            self.observe(status_path, await fetch(status_path, {}))
        if not self.completed.get(experiment_id):
            return await fetch(path, params)
        key = cache_key(base_url, path, params)
        file = self._file(experiment_id, key)
        cached = self._read(file, key)
        if cached is not None:
            self.hits += 1
            return cached["body"]
        self.misses += 1
        body = await fetch(path, params)        # a non-2xx answer raises here: errors are never stored
        if not _is_absence(body):
            self._write(file, key, body)
        return body

    # ------------------------------------------------------------------------------------------------ files
    def _experiment_dir(self, experiment_id: str) -> Path:
        return self.directory / hashlib.sha256(experiment_id.encode()).hexdigest()[:16]

    def _file(self, experiment_id: str, key: str) -> Path:
        return self._experiment_dir(experiment_id) / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    @staticmethod
    def _read(file: Path, key: str) -> dict | None:
        try:
            stored = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):           # absent, unreadable or corrupt: a miss
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or "body" not in stored:
            return None                         # another key under the same name, or a foreign file: a miss
        return stored

    def _write(self, file: Path, key: str, body: Any) -> None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump({"key": key, "body": body}, f, separators=(",", ":"))
                os.replace(tmp, file)           # readers see the old file or the new one, never half of one
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            self.writes += 1
        except (OSError, TypeError, ValueError) as exc:
            if not self._write_warned:
                log.warning("tidal MCP cache: cannot write under %s (%s); answering without the cache",
                            self.directory, exc)
                self._write_warned = True
