"""Training metrics: an append-only record on disk and a live feed in Redis for the dashboard.

Disk is the record. Under `<experiment>/dashboard_metrics/`: `metrics.jsonl` (`{step, timestamp, …metrics}` per
line) and `rl_metrics.jsonl` (`{global_step, timestamp, …}`), each record one append without fsync, so a crash
leaves at most a torn last line, which `core.io.read_jsonl` skips; `status.json`; and `latest.json`, the last metrics
record, replaced atomically at most every LATEST_INTERVAL_S and at close (a rename costs more than a record).
The file names are `core.names`'.

Redis is the live view (key names in `RedisKeys`, from `core.names.REDIS_KEYS`): one stream per experiment whose
entries carry `kind` ("metrics", "rl-metrics", "status") and `data` (the record's JSON, byte for byte the disk line),
so a dashboard replays all three kinds with one id sequence; plus the latest record of each kind and the set of
experiments.

Timestamps are Unix epoch seconds (float). Why Streams, the queue size and the timeouts: ADR 0006.
Part of the base layer (it imports only `core`): the plugin's trainers log through it.
"""
from __future__ import annotations

import json
import logging
import math
import operator
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.io import atomic_write_json
from core.names import LATEST_FILE, METRICS_DIRNAME, METRICS_FILE, REDIS_KEYS, RL_METRICS_FILE, STATUS_FILE, SYSTEM_FILE
from core.net import discover_redis_url
from core.paths import is_valid_experiment_id

log = logging.getLogger("tidal.metrics")

STATUSES = ("initialized", "training", "completed", "failed", "stopped")
TERMINAL_STATUSES = ("completed", "failed", "stopped")

KIND_METRICS, KIND_RL_METRICS, KIND_STATUS = "metrics", "rl-metrics", "status"

REDIS_TIMEOUT_S = 0.5       # connect and per-command socket timeout of the publisher
RECONNECT_MIN_S = 0.25      # first retry after an outage; doubles up to RECONNECT_MAX_S
RECONNECT_MAX_S = 2.0
LATEST_INTERVAL_S = 0.5     # latest.json is replaced at most this often (and at close); metrics.jsonl every record
DRAIN_DEADLINE_S = 2.0      # how long finalize()/close() wait for queued live updates to reach Redis
MAX_BATCH = 500             # records per pipeline round trip
SYSTEM_INTERVAL_S = 15.0    # system metrics at most this often: a low, fixed cost per run, never per step


@dataclass(frozen=True)
class RedisKeys:
    """The Redis names for one experiment; the dashboard reads these, the logger writes them."""

    experiment_id: str
    stream: str
    latest: str
    status: str
    rl_latest: str
    experiments: str = REDIS_KEYS["experimentsSet"]

    @classmethod
    def for_experiment(cls, experiment_id: str) -> RedisKeys:
        def key(name: str) -> str:
            return REDIS_KEYS[name].format(id=experiment_id)

        return cls(experiment_id=experiment_id, stream=key("metricsStream"), latest=key("metricsLatest"),
                   status=key("statusKey"), rl_latest=key("rlLatest"))

    def latest_key(self, kind: str) -> str:
        return {KIND_METRICS: self.latest, KIND_RL_METRICS: self.rl_latest, KIND_STATUS: self.status}[kind]


class MetricsLogger:
    """Logs one experiment's metrics to disk and, when a Redis URL is known, live to Redis.

    `redis_url=None` reads `$REDIS_URL`; when that is unset, the URL a running dashboard announced in the
    experiments directory (`core.net.discover_redis_url`); an empty URL, or neither, means disk only, silently.
    Logging never waits for Redis (see `_LivePublisher`). Not for use after `finalize()` / `close()`.
    """

    def __init__(self, experiment_dir: str | os.PathLike, experiment_id: str | None = None,
                 redis_url: str | None = None, stream_maxlen: int = 50_000, queue_size: int = 10_000,
                 system_interval_s: float | None = SYSTEM_INTERVAL_S):
        self.experiment_dir = Path(experiment_dir)
        self.experiment_id = experiment_id if experiment_id is not None else self.experiment_dir.resolve().name
        if not is_valid_experiment_id(self.experiment_id):
            raise ValueError(f"invalid experiment id {self.experiment_id!r}")
        if stream_maxlen < 1 or queue_size < 1:
            raise ValueError("stream_maxlen and queue_size must be positive")
        self.metrics_dir = self.experiment_dir / METRICS_DIRNAME
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.keys = RedisKeys.for_experiment(self.experiment_id)
        # Reentrant: a signal handler (SIGTERM → set_status("stopped")) may run while log_metrics holds the lock.
        self._lock = threading.RLock()
        self._files: dict[str, BinaryIO] = {}
        self._status: str | None = None
        self._closed = False
        self._latest_line: str | None = None  # the last metrics record not yet in latest.json
        self._latest_written_at = -math.inf
        # system metrics ride on log calls (no thread of our own); None switches them off
        self._system = SystemSampler(system_interval_s) if system_interval_s is not None else None
        url = os.environ.get("REDIS_URL") if redis_url is None else redis_url
        if url is None:  # unset, not empty: a dashboard serving this experiments directory may have announced one
            url = discover_redis_url(self.experiment_dir.resolve().parent) or ""
        self._live = _LivePublisher.start(url, self.keys, stream_maxlen, queue_size) if url else None
        self.set_status("initialized")

    @property
    def status(self) -> str | None:
        return self._status

    @property
    def dropped_live_updates(self) -> int:
        """Records that never reached Redis (it was down or the queue was full); all of them are on disk."""
        return self._live.dropped if self._live is not None else 0

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        """Append `{step, timestamp, **metrics}`; the first record of a run moves its status to "training"."""
        self._log_record(KIND_METRICS, METRICS_FILE, "step", step, metrics)

    def log_rl_metrics(self, history_or_record: dict[str, Any], global_step: int) -> None:
        """Append one RL iteration `{global_step, timestamp, …}`.

        A value that is a list is an RL history (one entry per iteration so far): its last entry is this
        iteration's value and an empty history is left out. So each line holds one iteration and the file grows
        linearly, whether the caller passes its whole history or just this iteration's values.
        """
        record = {}
        for key, value in history_or_record.items():
            value = _jsonable(value)
            if isinstance(value, list):
                if not value:
                    continue
                value = value[-1]
            record[key] = value
        self._log_record(KIND_RL_METRICS, RL_METRICS_FILE, "global_step", global_step, record)

    def set_status(self, status: str, **extra: Any) -> None:
        """Write `{status, timestamp, experiment_id, **extra}` to status.json and Redis."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        _check_reserved(extra, ("status", "timestamp", "experiment_id"))
        record = {"status": status, "timestamp": time.time(), "experiment_id": self.experiment_id,
                  **_jsonable(extra)}
        with self._lock:
            self._check_open()
            atomic_write_json(self.metrics_dir / STATUS_FILE, record)  # rare, so it may afford an fsync
            self._status = status
            self._publish(KIND_STATUS, _dumps(record))

    def finalize(self, status: str = "completed", **extra: Any) -> None:
        """Set the final status, then close. Idempotent: once finalized, further calls do nothing."""
        if status not in TERMINAL_STATUSES:
            raise ValueError(f"final status must be one of {', '.join(TERMINAL_STATUSES)}, got {status!r}")
        with self._lock:
            if self._closed:
                return
            self.set_status(status, **extra)
        self.close()

    def close(self) -> None:
        """Close the files and give queued live updates up to DRAIN_DEADLINE_S to reach Redis. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._latest_line is not None:
                self._write_latest(self._latest_line)
            for f in self._files.values():
                f.close()
            self._files.clear()
        if self._live is not None:
            self._live.close(DRAIN_DEADLINE_S)

    # ------------------------------------------------------------------------------------------ internals
    def _log_record(self, kind: str, file_name: str, step_key: str, step: int, values: dict[str, Any]) -> None:
        _check_reserved(values, (step_key, "timestamp"))
        line = _dumps({step_key: operator.index(step), "timestamp": time.time(), **values})
        with self._lock:
            self._check_open()
            if self._status == "initialized":
                self.set_status("training")
            self._append(file_name, line)
            if kind == KIND_METRICS:
                self._latest_line = line
                if time.monotonic() - self._latest_written_at >= LATEST_INTERVAL_S:
                    self._write_latest(line)
            self._publish(kind, line)  # under the lock, so the stream's order is the files' order
            sample = self._system.sample_due(step) if self._system is not None else None
            if sample is not None:
                self._append(SYSTEM_FILE, _dumps(sample))

    def _append(self, file_name: str, line: str) -> None:
        f = self._files.get(file_name)
        if f is None:
            f = self._files[file_name] = _open_for_append(self.metrics_dir / file_name)
        f.write(line.encode() + b"\n")  # unbuffered: one write(2) per record, visible to readers at once

    def _write_latest(self, line: str) -> None:
        # Rename-over keeps readers from seeing a half-written file; no fsync, as metrics.jsonl is the record.
        tmp = self.metrics_dir / f".{LATEST_FILE}.tmp"
        with open(tmp, "wb", buffering=0) as f:
            f.write(line.encode())
        os.replace(tmp, self.metrics_dir / LATEST_FILE)
        self._latest_line = None
        self._latest_written_at = time.monotonic()

    def _publish(self, kind: str, line: str) -> None:
        if self._live is not None:
            self._live.publish(kind, line)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"MetricsLogger for {self.experiment_id} is closed")


class SystemSampler:
    """Process CPU % (of one core, so it may exceed 100) and resident memory, plus the CUDA allocator's memory and
    the GPU's utilisation when this process uses CUDA; sampled at the first call, then at most every `interval_s`."""

    def __init__(self, interval_s: float):
        import psutil

        self.interval_s = interval_s
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # primes the counter: the first sample then averages since construction
        self._last = -math.inf

    def sample_due(self, step: int) -> dict[str, Any] | None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return None
        self._last = now
        sample = {"step": step, "timestamp": time.time(), "System/CPU %": self._process.cpu_percent(None),
                  "System/RSS MB": self._process.memory_info().rss / 2**20}
        sample.update(_gpu_sample())
        return sample


def _gpu_sample() -> dict[str, float]:
    """GPU figures only from a process that already uses CUDA: importing torch or initialising CUDA here would cost
    a CPU-only process seconds and memory."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {"System/GPU memory MB": torch.cuda.memory_allocated() / 2**20,
           "System/GPU reserved MB": torch.cuda.memory_reserved() / 2**20}
    try:
        out["System/GPU util %"] = float(torch.cuda.utilization())
    except Exception:  # needs NVML (pynvml); without it the memory figures still stand
        pass
    return out


class _LivePublisher:
    """The only code that talks to Redis, and the failure policy for it, written once:

    - One daemon thread does all Redis I/O, fed by a bounded queue: `publish` never touches the network.
      When the queue is full the oldest update is dropped (disk has it) and counted.
    - Short socket timeouts and no redis-py retries, so a dead or hung server costs the thread REDIS_TIMEOUT_S
      per attempt, never the training loop anything.
    - On the first error of an outage: one warning, the queue is discarded and updates are dropped (counted)
      until a reconnection attempt succeeds; attempts back off from RECONNECT_MIN_S to RECONNECT_MAX_S.
    - On reconnection: one line, then the experiment set and the latest-record keys are restored and the current
      status is appended to the stream; the stream continues with new records (missed ones stay on disk only).
    - A command the server rejects (it answered, so it is not an outage) drops that batch, warning once.
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, stream_maxlen: int, queue_size: int):
        self._redis = client
        kwargs = client.connection_pool.connection_kwargs
        self._where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"  # no credentials
        self._keys = keys
        self._maxlen = stream_maxlen
        self._queue: deque[tuple[str, str]] = deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._latest: dict[str, str] = {}  # kind -> last record, restored after an outage
        self._state = "connecting"  # -> "up" | "down"; changed only by the publisher thread
        self._closing = False
        self._warned_rejected = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"metrics-redis-{keys.experiment_id}", daemon=True)

    @classmethod
    def start(cls, url: str, keys: RedisKeys, stream_maxlen: int, queue_size: int) -> _LivePublisher | None:
        try:
            client = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
                                          retry=Retry(NoBackoff(), 0))
        except ValueError as exc:  # a malformed URL is one more way for Redis to be unavailable
            log.warning("MetricsLogger: invalid Redis URL (%s); metrics go to disk only", exc)
            return None
        publisher = cls(client, keys, stream_maxlen, queue_size)
        publisher._thread.start()
        return publisher

    def publish(self, kind: str, data: str) -> None:
        with self._cond:
            self._latest[kind] = data
            if self._state == "down":
                self.dropped += 1
                return
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((kind, data))
            self._cond.notify()

    def close(self, timeout: float) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)  # past the deadline the daemon thread ends on its own after its current call

    def _run(self) -> None:
        delay = RECONNECT_MIN_S
        try:
            while True:
                if self._state != "up":
                    if self._connect():
                        delay = RECONNECT_MIN_S
                        continue
                    with self._cond:
                        if self._closing:
                            return
                        self._cond.wait(delay)  # close() wakes it for one last attempt
                    delay = min(2 * delay, RECONNECT_MAX_S)
                    continue
                batch = self._next_batch()
                if batch is None:
                    return
                try:
                    self._send(batch)
                except redis.ResponseError as exc:
                    self._rejected(exc, len(batch))
                except (redis.RedisError, OSError) as exc:
                    self._went_down(exc, lost=len(batch))
        finally:
            self._redis.close()

    def _connect(self) -> bool:
        try:
            self._redis.ping()
            with self._cond:
                reconnected = self._state == "down"
                missed = dict(self._latest) if reconnected else {}
                self._state = "up"  # from here on publish() queues again, after this snapshot
            pipe = self._redis.pipeline(transaction=False)
            pipe.sadd(self._keys.experiments, self._keys.experiment_id)
            for kind, data in missed.items():
                pipe.set(self._keys.latest_key(kind), data)
            if KIND_STATUS in missed:
                self._xadd(pipe, KIND_STATUS, missed[KIND_STATUS])
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._went_down(exc)
            return False
        if reconnected:
            log.warning("MetricsLogger: Redis at %s reconnected; live metrics resumed (%d updates so far were "
                        "not published; they are on disk)", self._where, self.dropped)
        return True

    def _next_batch(self) -> list[tuple[str, str]] | None:
        """Wait for queued records; None once closing and drained."""
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            return [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]

    def _send(self, batch: list[tuple[str, str]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        latest: dict[str, str] = {}
        for kind, data in batch:
            self._xadd(pipe, kind, data)
            latest[kind] = data
        for kind, data in latest.items():  # only the batch's last record of each kind needs its key set
            pipe.set(self._keys.latest_key(kind), data)
        pipe.execute()

    def _xadd(self, pipe, kind: str, data: str) -> None:
        pipe.xadd(self._keys.stream, {"kind": kind, "data": data}, maxlen=self._maxlen, approximate=True)

    def _went_down(self, exc: Exception, lost: int = 0) -> None:
        with self._cond:
            was = self._state
            self._state = "down"
            self.dropped += lost + len(self._queue)
            self._queue.clear()
        if was != "down":
            log.warning("MetricsLogger: Redis at %s unavailable (%s); metrics go to disk only, reconnecting in "
                        "the background", self._where, exc)

    def _rejected(self, exc: Exception, lost: int) -> None:
        with self._cond:
            self.dropped += lost
        if not self._warned_rejected:
            self._warned_rejected = True
            log.warning("MetricsLogger: Redis at %s rejected live metrics (%s); those records are on disk only",
                        self._where, exc)


# ---------------------------------------------------------------------------------------------- records
def _jsonable(value: Any) -> Any:
    """Plain JSON types; tensors and numpy values become numbers or lists; NaN and ±inf become null (strict JSON,
    which a browser's JSON.parse accepts)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return _jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot log a value of type {type(value).__name__}")


def _dumps(record: dict[str, Any]) -> str:
    """Compact strict JSON. Plain numbers go straight to the C encoder; only a record it refuses (a tensor, a numpy
    value, NaN) pays for the conversion in Python — this runs once per training step."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False)


def _check_reserved(values: dict[str, Any], reserved: tuple[str, ...]) -> None:
    clash = [key for key in reserved if key in values]
    if clash:
        raise ValueError(f"{', '.join(clash)} is set by the logger and cannot be a metric name")


def _open_for_append(path: Path) -> BinaryIO:
    """Open a JSONL file for appending; a torn last line (a crash mid-write) is terminated first, so the next
    record starts on a line of its own instead of being glued to the fragment."""
    f = open(path, "ab", buffering=0)
    if f.tell() > 0:
        with open(path, "rb") as r:
            r.seek(-1, os.SEEK_END)
            if r.read(1) != b"\n":
                f.write(b"\n")
    return f
