"""Files: atomic writes (never a torn file) and the one JSONL reader every layer uses.

A JSONL file here is append-only, one JSON object per line, written by a process that may be mid-write or may have
crashed mid-write. So every reader skips a line that is not a JSON object (a torn last line, or the fragment a crash
left before a resumed run appended), and an incremental reader consumes only complete lines: an unterminated last
line is left for a later call, which reads it whole.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

import yaml


# ---------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _json_default(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------- JSONL
def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    """The JSON objects of `data`, one per line; blank lines and lines that are not a JSON object are skipped."""
    records = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of a JSONL file ([] when it is missing)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return parse_jsonl(data)


def read_jsonl_since(path: str | os.PathLike, offset: int = 0,
                     max_bytes: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """The records after byte `offset` up to the last complete line, and the offset to pass next time.

    For tailing: an unterminated last line is not consumed, so it is read whole on a later call. `max_bytes` bounds
    what one call reads (the records of the complete lines within it). A missing file gives ([], offset); any
    other OSError is the caller's.
    """
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read() if max_bytes is None else f.read(max_bytes)
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return parse_jsonl(data[:end]), offset + end


def parse_yaml_mapping(source: str | IO[str], name: str | os.PathLike, error: type[Exception], expected: str,
                       loader: type = yaml.SafeLoader) -> dict:
    """YAML whose top level must be a mapping (a config, the manifest); otherwise `error` naming the file, the line
    and the problem, or what was `expected` there."""
    try:
        data = yaml.load(source, Loader=loader)  # only SafeLoader and its subclasses are passed
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise error(f"{name}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise error(f"{name}: expected {expected} at the top level")
    return data
