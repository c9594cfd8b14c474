"""Experiments as the dashboard sees them: discovery, metrics, status, checkpoints and result files.

Disk is the record (MetricsLogger writes every record there first); Redis adds what is live (status while a run is
going, experiments whose files live on another machine). Every id is validated before it touches a path.
"""
from __future__ import annotations

import asyncio
import json
import os
from collections import OrderedDict
from pathlib import Path

import anyio
from redis.exceptions import RedisError

from ..errors import NotFound
from experiment_utils import is_valid_experiment_id, read_experiment_metadata
from .metrics_reader import JsonlTail, downsample, series_keys
from .paths import check_experiment_id


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


CONFIG_MAX_BYTES = 256 * 1024


class ExperimentService:
    def __init__(self, settings, manifest, redis):
        self.settings = settings
        self.manifest = manifest
        self.redis = redis
        self.root = settings.experiments_dir
        self.tail = JsonlTail()
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
                for exp_id, raw in zip(ordered, raws):
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
        status = redis_status or _read_json(self._lm_file(path, metrics.lm.statusFile))
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
        }

    # ---- metrics
    async def metrics(self, exp_id: str, mode: str, window: int, max_points: int, keys: list[str] | None,
                      series: str = "lm") -> bytes:
        """The JSON body of GET /metrics (pre-encoded and cached per file version: charts poll this).
        `series` picks the LM history (`metrics` records) or the RL one (`rl-metrics` records)."""
        exp_dir = await self.require(exp_id)
        history = (self.manifest.metrics.lm if series == "lm" else self.manifest.metrics.rl).historyFile
        path = self._lm_file(exp_dir, history)
        if path.is_file():
            if self.tail.needs_read(path):
                records, version = await anyio.to_thread.run_sync(self.tail.read, path)
            else:
                records, version = self.tail.read(path)
            source = "disk"
        else:
            kind = "metrics" if series == "lm" else "rl-metrics"
            records, version, source = await self._redis_metrics(exp_id, kind), None, "redis"
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

    async def _redis_metrics(self, exp_id: str, kind: str) -> list[dict]:
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
        return live if live is not None else _read_json(self._lm_file(exp_dir, self.manifest.metrics.lm.statusFile))

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

    async def checkpoints(self, exp_id: str) -> list[dict]:
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

    async def config_files(self, exp_id: str) -> list[dict]:
        """The YAML configs saved with the run (config.yaml, or base_config.yaml + rl_config.yaml for RL), as text.
        Only regular files directly inside the experiment directory, and not over CONFIG_MAX_BYTES each."""
        exp_dir = await self.require(exp_id)

        def scan():
            out = []
            try:
                entries = sorted(os.scandir(exp_dir), key=lambda e: e.name)
            except OSError:
                return out
            for entry in entries:
                if not entry.name.endswith((".yaml", ".yml")) or not entry.is_file(follow_symlinks=False):
                    continue
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
