"""Experiments as the dashboard sees them: discovery, metrics, status, checkpoints and result files.

Disk is the record (MetricsLogger writes every record there first); Redis adds what is live (status while a run is
going, experiments whose files live on another machine). Every id is validated before it touches a path.
"""
from __future__ import annotations

import asyncio
import builtins
import json
import os
from collections import OrderedDict
from pathlib import Path

import anyio
import yaml
from redis.exceptions import RedisError

from core.io import atomic_write_json
from core.names import METADATA_FILE, SYSTEM_FILE
from core.paths import is_valid_experiment_id
from experiment_utils import read_experiment_metadata

from ..errors import NotFound
from .metrics_reader import JsonlTail, LastValues, downsample, series_keys
from .paths import check_experiment_id


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def newer_status(live, disk):
    """The one rule for which status record counts: the one with the later `timestamp` (MetricsLogger writes the
    same record to both sides, so a run finished without Redis, e.g. a CLI resume, must not be hidden by the older
    live record). A tie or a record without a timestamp goes to disk, the record of the run."""
    def stamp(record):
        ts = record.get("timestamp") if isinstance(record, dict) else None
        return ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else float("-inf")

    if not isinstance(live, dict):
        return disk
    if not isinstance(disk, dict):
        return live
    return live if stamp(live) > stamp(disk) else disk


CONFIG_MAX_BYTES = 256 * 1024
LOG_TAIL_LINES = 40
LOG_TAIL_BYTES = 16 * 1024


def _log_tail(exp_dir: Path) -> str | None:
    """The last LOG_TAIL_LINES lines of the run's newest `*.log` file (the trainer's own log: training.log,
    rl_training.log), read from at most its last LOG_TAIL_BYTES."""
    try:
        logs = [e for e in os.scandir(exp_dir) if e.name.endswith(".log") and e.is_file(follow_symlinks=False)]
        if not logs:
            return None
        newest = max(logs, key=lambda e: e.stat().st_mtime)
        with open(newest.path, "rb") as f:
            start = f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return "\n".join(lines[1 if start else 0:][-LOG_TAIL_LINES:])  # a read from mid-file starts mid-line
ANNOTATIONS = ("name", "tags", "notes")


def _annotations(meta: dict) -> dict:
    """name, tags and notes as the API shows them; metadata.json is a user-editable file, so wrong types are dropped."""
    name, tags, notes = meta.get("name"), meta.get("tags"), meta.get("notes")
    return {"name": name if isinstance(name, str) else None,
            "tags": [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else [],
            "notes": notes if isinstance(notes, str) else None}


def _config_entries(exp_dir: Path) -> list[os.DirEntry]:
    """The YAML configs saved with a run: regular files directly inside its directory (no symlinks), by name."""
    try:
        entries = sorted(os.scandir(exp_dir), key=lambda e: e.name)
    except OSError:
        return []
    return [e for e in entries if e.name.endswith((".yaml", ".yml")) and e.is_file(follow_symlinks=False)]


def flatten(config, prefix: str = "") -> dict:
    """{"A": {"B": 1}} -> {"A.B": 1}: a config as table columns and diff rows (lists stay values)."""
    out = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


class ExperimentService:
    def __init__(self, settings, manifest, redis):
        self.settings = settings
        self.manifest = manifest
        self.redis = redis
        self.root = settings.experiments_dir
        self.tail = JsonlTail()
        self.last_values = LastValues()
        self._metadata_lock = asyncio.Lock()  # read-modify-write of metadata.json by concurrent PATCHes
        self._responses: OrderedDict[tuple, bytes] = OrderedDict()
        self._computing: dict[tuple, asyncio.Future] = {}

    # ---- helpers
    def dir_of(self, exp_id: str) -> Path:
        return self.root / check_experiment_id(exp_id)

    async def require(self, exp_id: str) -> Path:
        """The experiment's directory; NotFound unless it exists on disk or Redis knows it."""
        path = self.dir_of(exp_id)
        if path.is_dir():
            return path
        try:
            if await self.redis.sismember(self.manifest.redis.experimentsSet, exp_id):
                return path
        except (RedisError, OSError):
            pass
        raise NotFound(f"experiment not found: {exp_id}")

    def _lm_file(self, exp_dir: Path, name: str) -> Path:
        return exp_dir / self.manifest.metrics.lm.directory / name

    async def _redis_json(self, key: str):
        try:
            raw = await self.redis.get(key)
        except (RedisError, OSError):
            return None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    # ---- listing
    async def list(self) -> list[dict]:
        ids: set[str] = set()
        try:
            for entry in os.scandir(self.root):
                if entry.is_dir() and is_valid_experiment_id(entry.name):
                    ids.add(entry.name)
        except OSError:
            pass
        redis_statuses: dict[str, dict] = {}
        try:
            members = await self.redis.smembers(self.manifest.redis.experimentsSet)
            ids.update(m for m in members if is_valid_experiment_id(m))
            ordered = sorted(ids)
            if ordered:
                raws = await self.redis.mget([self.manifest.redis.status(i) for i in ordered])
                for exp_id, raw in zip(ordered, raws, strict=True):
                    try:
                        if raw:
                            redis_statuses[exp_id] = json.loads(raw)
                    except ValueError:
                        pass
        except (RedisError, OSError):
            pass
        summaries = await anyio.to_thread.run_sync(lambda: [self._summary(i, redis_statuses.get(i)) for i in ids])
        return sorted(summaries, key=lambda s: s["createdAt"] or 0, reverse=True)

    def _summary(self, exp_id: str, redis_status: dict | None) -> dict:
        path = self.root / exp_id
        metrics = self.manifest.metrics
        meta = read_experiment_metadata(path) if path.is_dir() else None
        status = newer_status(redis_status, _read_json(self._lm_file(path, metrics.lm.statusFile)))
        names = []
        try:
            names = os.listdir(path)
        except OSError:
            pass
        checkpoints = sorted(n for n in names if n.endswith(".pth"))
        exp_type = (meta or {}).get("type")
        if exp_type not in ("lm", "rl"):
            exp_type = ("rl" if any(self.manifest.is_rl_checkpoint(c) for c in checkpoints) or
                        metrics.rl.directory in names else
                        "lm" if checkpoints or metrics.lm.directory in names else "unknown")
        created = (meta or {}).get("created_at")
        if not isinstance(created, (int, float)):
            try:
                created = path.stat().st_mtime
            except OSError:
                created = (status or {}).get("timestamp")
        status_name = (status or {}).get("status") if isinstance(status, dict) else None
        return {
            "id": exp_id, "type": exp_type, "createdAt": created, "status": status_name,
            "lastUpdate": (status or {}).get("timestamp") if isinstance(status, dict) else None,
            "live": status_name == "training",
            "sourceExperiment": (meta or {}).get("source_experiment") or (meta or {}).get("source_experiment_id"),
            "sourceCheckpoint": (meta or {}).get("source_checkpoint"),
            "configPath": (meta or {}).get("config_path"),
            "hasMetrics": (path / metrics.lm.directory / metrics.lm.historyFile).exists(),
            "hasRLMetrics": metrics.rl.directory in names or
                            (path / metrics.lm.directory / metrics.rl.historyFile).exists(),
            "hasEvaluation": self._evaluation_path(path) is not None,
            "hasAblation": (path / metrics.ablationFile).exists(),
            "checkpoints": checkpoints,
            "onDisk": path.is_dir(),
            **_annotations(meta or {}),
            "error": status.get("error") if isinstance(status, dict) and isinstance(status.get("error"), str) else None,
            # read only for failed runs: the list is polled, and a failed run's page is where the log is wanted
            "logTail": _log_tail(path) if status_name == "failed" else None,
        }

    # ---- metrics
    # below the `list` method, `list` in an annotation names the method: builtins.list is the type
    async def metrics(self, exp_id: str, mode: str, window: int, max_points: int, keys: builtins.list[str] | None,
                      series: str = "lm") -> bytes:
        """The JSON body of GET /metrics (pre-encoded and cached per file version: charts poll this).
        `series` picks the LM history (`metrics` records) or the RL one (`rl-metrics` records)."""
        exp_dir = await self.require(exp_id)
        history = {"lm": self.manifest.metrics.lm.historyFile, "rl": self.manifest.metrics.rl.historyFile,
                   "system": SYSTEM_FILE}[series]
        path = self._lm_file(exp_dir, history)
        if path.is_file():
            if self.tail.needs_read(path):
                records, version = await anyio.to_thread.run_sync(self.tail.read, path)
            else:
                records, version = self.tail.read(path)
            source = "disk"
        else:
            # system samples stay on disk (they are not in the live stream)
            kind = {"lm": "metrics", "rl": "rl-metrics"}.get(series)
            records = await self._redis_metrics(exp_id, kind) if kind else []
            version, source = None, "redis"
        cache_key = (str(path), version, mode, window, max_points, tuple(keys) if keys else None)
        if version is not None and cache_key in self._responses:
            self._responses.move_to_end(cache_key)
            return self._responses[cache_key]
        if version is None:
            return await anyio.to_thread.run_sync(self._metrics_body, exp_id, records, mode, window, max_points,
                                                  keys, source)
        # Single flight: while a run is being written, every poller of its chart asks for the same new version at
        # once; one computation (a task of its own, so a client that disconnects cannot cancel it) serves them all.
        task = self._computing.get(cache_key)
        if task is None:
            task = asyncio.ensure_future(self._compute_metrics(cache_key, exp_id, records, mode, window, max_points,
                                                               keys, source))
            self._computing[cache_key] = task
            task.add_done_callback(lambda t: (self._computing.pop(cache_key, None),
                                              t.cancelled() or t.exception()))  # an error nobody awaited is seen
        return await asyncio.shield(task)

    async def _compute_metrics(self, cache_key, *args) -> bytes:
        body = await anyio.to_thread.run_sync(self._metrics_body, *args)
        self._responses[cache_key] = body
        while len(self._responses) > 64:
            self._responses.popitem(last=False)
        return body

    def _metrics_body(self, exp_id, records, mode, window, max_points, keys, source) -> bytes:
        selected = records[-window:] if mode == "recent" else list(records)
        points, was_downsampled = downsample(selected, max_points, keys)
        return json.dumps({
            "experimentId": exp_id, "mode": mode, "points": points, "totalPoints": len(points),
            "originalCount": len(selected), "downsampled": was_downsampled, "maxPoints": max_points,
            "keys": keys or series_keys(selected), "source": source,
        }, allow_nan=False, default=str).encode()

    async def _redis_metrics(self, exp_id: str, kind: str) -> builtins.list[dict]:
        key = self.manifest.redis.metrics_stream(exp_id)
        records, start = [], "-"
        try:
            while True:
                page = await self.redis.xrange(key, min=start, max="+", count=5000)
                for _id, fields in page:
                    if fields.get("kind") == kind:
                        try:
                            records.append(json.loads(fields.get("data", "")))
                        except ValueError:
                            pass
                if len(page) < 5000:
                    return records
                start = "(" + page[-1][0]
        except (RedisError, OSError):
            return records

    # ---- status, RL metrics, checkpoints, result files
    async def status(self, exp_id: str) -> dict | None:
        exp_dir = await self.require(exp_id)
        live = await self._redis_json(self.manifest.redis.status(exp_id))
        return newer_status(live, _read_json(self._lm_file(exp_dir, self.manifest.metrics.lm.statusFile)))

    async def rl_metrics(self, exp_id: str):
        exp_dir = await self.require(exp_id)
        live = await self._redis_json(self.manifest.redis.rl_latest(exp_id))
        if live is not None:
            return live
        rl = self.manifest.metrics.rl
        history = _read_json(exp_dir / rl.directory / rl.metricsFile)
        if history is not None:
            return history
        path = self._lm_file(exp_dir, rl.historyFile)
        if path.is_file():
            records, _ = await anyio.to_thread.run_sync(self.tail.read, path)
            return records[-1] if records else None
        return None

    async def checkpoints(self, exp_id: str) -> builtins.list[dict]:
        exp_dir = await self.require(exp_id)

        def scan():
            out = []
            try:
                entries = list(os.scandir(exp_dir))
            except OSError:
                return out
            for entry in entries:
                if not entry.name.endswith(".pth") or not entry.is_file():
                    continue
                st = entry.stat()
                phase, epoch = self.manifest.classify_checkpoint(entry.name)
                out.append({"filename": entry.name, "path": f"experiments/{exp_id}/{entry.name}",
                            "sizeBytes": st.st_size, "modified": st.st_mtime, "phase": phase, "epoch": epoch})
            return sorted(out, key=lambda c: (c["modified"], c["filename"]))

        return await anyio.to_thread.run_sync(scan)

    async def config_files(self, exp_id: str) -> builtins.list[dict]:
        """The YAML configs saved with the run (config.yaml, or base_config.yaml + rl_config.yaml for RL), as text.
        Only regular files directly inside the experiment directory, and not over CONFIG_MAX_BYTES each."""
        exp_dir = await self.require(exp_id)

        def scan():
            out = []
            for entry in _config_entries(exp_dir):
                with open(entry.path, "rb") as f:
                    raw = f.read(CONFIG_MAX_BYTES + 1)
                text = raw[:CONFIG_MAX_BYTES].decode("utf-8", errors="replace")
                out.append({"filename": entry.name, "content": text, "truncated": len(raw) > CONFIG_MAX_BYTES})
            return out

        return await anyio.to_thread.run_sync(scan)

    def _evaluation_path(self, exp_dir: Path) -> Path | None:
        name = self.manifest.metrics.evaluationFile
        for candidate in (exp_dir / name, exp_dir / Path(name).stem / name):
            if candidate.is_file():
                return candidate
        return None

    async def evaluation(self, exp_id: str):
        exp_dir = await self.require(exp_id)
        path = self._evaluation_path(exp_dir)
        return _read_json(path) if path else None

    async def ablation(self, exp_id: str):
        exp_dir = await self.require(exp_id)
        return _read_json(exp_dir / self.manifest.metrics.ablationFile)

    # ---- annotations, the runs table, config diffs
    async def annotate(self, exp_id: str, changes: dict) -> dict:
        """Set the run's name/tags/notes in metadata.json (atomically; other keys kept) and return its summary.
        `changes` holds only the fields the client sent; None clears one."""
        exp_dir = self.dir_of(exp_id)
        if not exp_dir.is_dir():
            raise NotFound(f"experiment not found on disk: {exp_id}")
        if "tags" in changes and changes["tags"] is not None:
            changes["tags"] = list(dict.fromkeys(changes["tags"]))  # duplicates dropped, order kept
        if changes.get("name") == "":
            changes["name"] = None

        def write():
            meta = read_experiment_metadata(exp_dir)
            meta.update({k: v for k, v in changes.items() if k in ANNOTATIONS})
            atomic_write_json(exp_dir / METADATA_FILE, meta)

        async with self._metadata_lock:
            await anyio.to_thread.run_sync(write)
        status = await self._redis_json(self.manifest.redis.status(exp_id))
        return await anyio.to_thread.run_sync(self._summary, exp_id, status)

    def _effective_params(self, exp_dir: Path) -> dict:
        """The run's saved YAML configs (config.yaml, or base_config.yaml + rl_config.yaml), flattened and merged."""
        params: dict = {}
        for entry in _config_entries(exp_dir):
            if entry.stat().st_size > CONFIG_MAX_BYTES:
                continue
            try:
                config = yaml.safe_load(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError, yaml.YAMLError):
                continue
            if isinstance(config, dict):
                params.update(flatten(config))
        return params

    async def table(self) -> dict:
        """Every run with its effective hyperparameters and the last value of each of its metric series."""
        summaries = await self.list()
        metrics = self.manifest.metrics

        def rows():
            out = []
            for summary in summaries:
                exp_dir = self.root / summary["id"]
                history = metrics.rl.historyFile if summary["type"] == "rl" else metrics.lm.historyFile
                out.append({"id": summary["id"], "type": summary["type"], "name": summary["name"],
                            "tags": summary["tags"], "status": summary["status"], "createdAt": summary["createdAt"],
                            "params": self._effective_params(exp_dir),
                            "final": self.last_values.read(self._lm_file(exp_dir, history))})
            return out

        runs = await anyio.to_thread.run_sync(rows)
        return {"runs": runs,
                "paramKeys": sorted({k for r in runs for k in r["params"]}),
                "metricKeys": sorted({k for r in runs for k in r["final"]})}

    async def config_diff(self, exp_id: str, other_id: str) -> dict:
        """The keys whose effective values differ between two runs (`a` is exp_id's value, `b` other_id's)."""
        a_dir = await self.require(exp_id)
        b_dir = await self.require(other_id)
        a, b = await anyio.to_thread.run_sync(lambda: (self._effective_params(a_dir), self._effective_params(b_dir)))
        differences, same = [], 0
        for key in sorted(a.keys() | b.keys()):
            if key in a and key in b and a[key] == b[key]:
                same += 1
                continue
            change = "changed" if key in a and key in b else "removed" if key in a else "added"
            differences.append({"key": key, "a": a.get(key), "b": b.get(key), "change": change})
        return {"experimentId": exp_id, "other": other_id, "differences": differences, "same": same}
