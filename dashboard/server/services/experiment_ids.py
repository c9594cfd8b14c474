"""Experiment ids and metadata: `experiment_utils` (project root) when present, else an equivalent fallback.

The fallback keeps the server importable while `experiment_utils.py` is written; it follows SPEC §8 (id
`{YYYYmmdd-HHMMSS}-commit_{hash|nogit}-config_{sha256[:10]}`, RL `-rl_{hash}`) and is used only on ImportError.
"""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

from plugins.tidal.Utils import PROJECT_ROOT

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

try:  # pragma: no branch
    from experiment_utils import is_valid_experiment_id as _is_valid  # type: ignore
    from experiment_utils import make_experiment_id as _make  # type: ignore
    from experiment_utils import read_experiment_metadata as _read_meta  # type: ignore
except ImportError:  # pragma: no cover - only while experiment_utils.py does not exist yet
    _is_valid = _make = _read_meta = None


def is_valid_experiment_id(value: str) -> bool:
    if not isinstance(value, str) or not _ID_RE.match(value) or ".." in value:
        return False
    return bool(_is_valid(value)) if _is_valid is not None else True


def _sha10(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


def make_experiment_id(config_path: str | Path, rl_config_path: str | Path | None = None) -> str:
    if _make is not None:
        return _make(config_path, rl_config_path)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip() or "nogit"
    except (OSError, subprocess.SubprocessError):
        commit = "nogit"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tail = f"rl_{_sha10(rl_config_path)}" if rl_config_path else f"config_{_sha10(config_path)}"
    return f"{stamp}-commit_{commit}-{tail}"


def read_experiment_metadata(exp_dir: str | Path) -> dict | None:
    if _read_meta is not None:
        try:
            return _read_meta(exp_dir)
        except Exception:  # a broken metadata file must not break a listing
            return None
    try:
        data = json.loads((Path(exp_dir) / "metadata.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
