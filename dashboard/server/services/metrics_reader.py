"""Reading metric histories for charts: incremental JSONL parsing and min/max downsampling.

`JsonlTail` keeps the parsed records of each metrics file and, on every read, parses only the bytes appended since
(`core.io.read_jsonl_since`: complete lines only, as the trainer may be mid-write; a torn last line waits).
`downsample` bounds each metric series to `max_points`: per bucket of consecutive records it keeps the records
holding that series' minimum and maximum (spikes survive, unlike stride sampling), and always the series' last point.
"""
from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

from core.io import read_jsonl_since

NON_SERIES_KEYS = {"step", "timestamp", "global_step"}


class _FileState:
    __slots__ = ("ino", "offset", "records", "lock", "version")

    def __init__(self):
        self.ino = None
        self.offset = 0
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.version = 0


class JsonlTail:
    """Parsed contents of append-only JSONL files, updated incrementally; an LRU of `capacity` files."""

    def __init__(self, capacity: int = 16):
        self.capacity = capacity
        self._files: OrderedDict[str, _FileState] = OrderedDict()
        self._lock = threading.Lock()

    def _state(self, path: str) -> _FileState:
        with self._lock:
            state = self._files.get(path)
            if state is None:
                state = self._files[path] = _FileState()
                while len(self._files) > self.capacity:
                    self._files.popitem(last=False)
            else:
                self._files.move_to_end(path)
            return state

    def needs_read(self, path: Path) -> bool:
        """Cheap check (one stat): is there anything new to parse?"""
        try:
            st = os.stat(path)
        except OSError:
            return False
        state = self._files.get(str(path))
        return state is None or state.ino != st.st_ino or st.st_size != state.offset

    def read(self, path: Path) -> tuple[list[dict], int]:
        """(records, version): the version changes whenever records were added or the file was replaced."""
        state = self._state(str(path))
        with state.lock:
            try:
                st = os.stat(path)
            except OSError:
                return [], -1
            if state.ino != st.st_ino or st.st_size < state.offset:  # replaced or truncated: start over
                state.ino, state.offset, state.records = st.st_ino, 0, []
                state.version += 1
            if st.st_size > state.offset:
                added, state.offset = read_jsonl_since(path, state.offset, max_bytes=st.st_size - state.offset)
                state.records.extend(added)
                if added:
                    state.version += 1
            return state.records, state.version


class LastValues:
    """The last finite value of every series of append-only JSONL files (a run's "final metrics"), updated from the
    bytes appended since the last call, so a table of many long runs costs one stat per run when nothing changed.
    Kept apart from `JsonlTail`: it holds a few numbers per file, not every record, so it needs no LRU bound."""

    def __init__(self):
        self._files: dict[str, tuple[int, int, dict]] = {}   # path -> (inode, offset, {key: value})
        self._lock = threading.Lock()

    def read(self, path: Path) -> dict:
        try:
            st = os.stat(path)
        except OSError:
            return {}
        with self._lock:
            ino, offset, values = self._files.get(str(path), (None, 0, {}))
            if ino != st.st_ino or st.st_size < offset:   # replaced or truncated: start over
                offset, values = 0, {}
            if st.st_size > offset:
                records, offset = read_jsonl_since(path, offset, max_bytes=st.st_size - offset)
                values = dict(values)
                for record in records:
                    values.update((k, v) for k, v in record.items() if k not in NON_SERIES_KEYS and _finite(v))
            self._files[str(path)] = (st.st_ino, offset, values)
            return values


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def series_keys(records: list[dict]) -> list[str]:
    keys: dict[str, None] = {}
    for record in records:
        for k, v in record.items():
            if k not in NON_SERIES_KEYS and k not in keys and _finite(v):
                keys[k] = None
    return list(keys)


def downsample(records: list[dict], max_points: int, keys: list[str] | None = None) -> tuple[list[dict], bool]:
    """Bound every series to `max_points` values (min and max per bucket, last point kept).

    Returns (records, downsampled). Records keep `step`/`timestamp`; when downsampled, each returned record carries
    only the series for which it was selected (a chart reads each series from the records that have it).
    """
    keys = keys if keys is not None else series_keys(records)
    positions: dict[str, list[int]] = {k: [] for k in keys}
    for i, record in enumerate(records):
        for k in keys:
            if _finite(record.get(k)):
                positions[k].append(i)
    if all(len(p) <= max_points for p in positions.values()):
        if keys == series_keys(records):
            return records, False
        return [_project(r, keys) for r in records if any(k in r for k in keys)], False
    selected: dict[int, set[str]] = {}
    for k, pos in positions.items():
        for i in _select(records, k, pos, max_points):
            selected.setdefault(i, set()).add(k)
    out = []
    for i in sorted(selected):
        record = records[i]
        point = {f: record[f] for f in NON_SERIES_KEYS if f in record}
        for k in selected[i]:
            point[k] = record[k]
        out.append(point)
    return out, True


def _project(record: dict, keys: list[str]) -> dict:
    point = {f: record[f] for f in NON_SERIES_KEYS if f in record}
    point.update({k: record[k] for k in keys if k in record})
    return point


def _select(records: list[dict], key: str, pos: list[int], max_points: int) -> list[int]:
    n = len(pos)
    if n <= max_points:
        return pos
    if max_points < 3:
        return pos[-max_points:]
    buckets = (max_points - 1) // 2          # two points per bucket, one slot for the last point
    chosen: set[int] = {pos[-1]}
    for b in range(buckets):
        lo, hi = (b * (n - 1)) // buckets, ((b + 1) * (n - 1)) // buckets
        if hi <= lo:
            continue
        best_min = best_max = pos[lo]
        vmin = vmax = records[pos[lo]][key]
        for j in range(lo + 1, hi):
            v = records[pos[j]][key]
            if v < vmin:
                vmin, best_min = v, pos[j]
            elif v > vmax:
                vmax, best_max = v, pos[j]
        chosen.add(best_min)
        chosen.add(best_max)
    return sorted(chosen)
