"""Experiments on disk: ids, the `experiments/<id>/` directory with its metadata and effective configs, and devices.

Part of the base layer (it imports only `core`): the trainers, the worker agent and the dashboard all use it.
Every consumer checks an experiment id with `core.paths.is_valid_experiment_id`.
torch is imported only inside `resolve_device`: the dashboard imports this module and need not load torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core.errors import TidalError
from core.io import atomic_write_json, atomic_write_text
from core.names import METADATA_FILE
from core.paths import PROJECT_ROOT, is_valid_experiment_id

EXPERIMENT_KINDS = ("lm", "rl")
RL_CONFIG_FILE = "rl_config.yaml"  # the RL part of an RL run's effective configs (hashed as `-rl_`)

_PLAIN_FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_GIT_HASH_RE = re.compile(r"[0-9a-f]{4,40}")
_GIT_TIMEOUT_S = 5.0


def experiments_root() -> Path:
    """`$EXPERIMENTS_DIR` (absolute), else `<project root>/experiments`."""
    configured = os.environ.get("EXPERIMENTS_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    return PROJECT_ROOT / "experiments"


def git_short_hash(cwd: str | os.PathLike = PROJECT_ROOT) -> str:
    """The short hash of HEAD in `cwd`'s repository, or "nogit" when git, the repository or a commit is missing."""
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=_GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "nogit"
    short = result.stdout.strip()
    return short if result.returncode == 0 and _GIT_HASH_RE.fullmatch(short) else "nogit"


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def config_digest(config: dict) -> str:
    """sha256 of a config as canonical JSON (sorted keys): equal configs hash equal whatever their key order,
    comments or YAML spelling, so the id tracks what the run uses rather than the bytes of a file."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def make_experiment_id(config_path: str | os.PathLike, rl_config_path: str | os.PathLike | None = None,
                       now: datetime | None = None, *, config: dict | None = None,
                       rl_config: dict | None = None) -> str:
    """`{YYYYmmdd-HHMMSS}-commit_{hash|nogit}-config_{hash[:10]}[-rl_{hash[:10]}]`.

    Each hash is `config_digest` of the effective config when it is given (`config`, `rl_config`: after `--set`
    overrides), else the sha256 of the file's bytes. The time is local wall-clock time (what a user reads in a
    directory listing); `created_at` in the metadata is the unambiguous epoch timestamp.
    """
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    lm_hash = config_digest(config) if config is not None else file_sha256(config_path)
    exp_id = f"{stamp}-commit_{git_short_hash()}-config_{lm_hash[:10]}"
    if rl_config is not None:
        exp_id += f"-rl_{config_digest(rl_config)[:10]}"
    elif rl_config_path is not None:
        exp_id += f"-rl_{file_sha256(rl_config_path)[:10]}"
    return exp_id


def _split_effective(kind: str, effective_configs: dict[str, dict]) -> tuple[dict | None, dict | None]:
    """(LM part, RL part) of a run's effective configs, as the id hashes them; None where there is nothing."""
    rl = effective_configs.get(RL_CONFIG_FILE) if kind == "rl" else None
    lm = {name: c for name, c in effective_configs.items() if not (kind == "rl" and name == RL_CONFIG_FILE)}
    # one LM file hashes as itself, so `config_digest(config)` of a plain LM run is its id's hash
    return (next(iter(lm.values())) if len(lm) == 1 else lm or None), rl


def create_experiment_dir(kind: str, config_path: str | os.PathLike, effective_configs: dict[str, dict],
                          rl_config_path: str | os.PathLike | None = None, source_experiment: str | None = None,
                          source_checkpoint: str | os.PathLike | None = None,
                          experiment_id: str | None = None) -> Path:
    """Create (or reuse) `experiments_root()/<id>/` with `metadata.json` and the effective configs; return it.

    The id is `experiment_id`, else `$TIDAL_EXPERIMENT_ID` (a job's pre-assigned id), else a generated one.
    A given id whose directory exists (a pre-created or resumed run) keeps its metadata unless it has none;
    a generated id that collides (two runs in the same second) gets a numeric suffix instead.
    `effective_configs` maps plain file names (`config.yaml`, or `base_config.yaml` + `rl_config.yaml`) to the
    configs after `--set` overrides; they are (re)written as YAML each time, and a generated id hashes them (the
    RL part, `rl_config.yaml`, as `-rl_`), so the same file run with other overrides gets another id.
    """
    if kind not in EXPERIMENT_KINDS:
        raise TidalError(f"experiment type must be one of {', '.join(EXPERIMENT_KINDS)}, got {kind!r}")
    if kind == "rl" and rl_config_path is None:
        raise TidalError("an RL experiment needs rl_config_path")
    for name in effective_configs:
        if not _PLAIN_FILE_NAME_RE.fullmatch(name):
            raise TidalError(f"config file name must be a plain file name, got {name!r}")

    lm_effective, rl_effective = _split_effective(kind, effective_configs)
    given_id = experiment_id or os.environ.get("TIDAL_EXPERIMENT_ID") or None
    root = experiments_root()
    if given_id is not None:
        if not is_valid_experiment_id(given_id):
            raise TidalError(f"invalid experiment id {given_id!r}: use letters, digits, '_', '-', '.' "
                             f"(at most 128, not starting with '.' or '-')")
        exp_dir = root / given_id
        exp_dir.mkdir(parents=True, exist_ok=True)
    else:
        exp_dir = make_unique_dir(root, make_experiment_id(config_path, rl_config_path if kind == "rl" else None,
                                                           config=lm_effective, rl_config=rl_effective))

    if not read_experiment_metadata(exp_dir):
        atomic_write_json(exp_dir / METADATA_FILE, {
            "experiment_id": exp_dir.name,
            "type": kind,
            "created_at": time.time(),
            "config_path": str(config_path),
            "config_sha256": file_sha256(config_path),
            "config_digest": config_digest(lm_effective) if lm_effective is not None else None,
            "rl_config_digest": config_digest(rl_effective) if rl_effective is not None else None,
            "git_commit": git_short_hash(),
            "rl_config_path": str(rl_config_path) if rl_config_path is not None else None,
            "rl_config_sha256": file_sha256(rl_config_path) if rl_config_path is not None else None,
            "source_experiment": source_experiment,
            "source_checkpoint": str(source_checkpoint) if source_checkpoint is not None else None,
        })
    for name, config in effective_configs.items():
        atomic_write_text(exp_dir / name, yaml.safe_dump(config, sort_keys=False))
    return exp_dir


def make_unique_dir(root: Path, base_id: str) -> Path:
    """mkdir `root/base_id`, or `root/base_id-2`, `-3`, … : mkdir is atomic, so two processes never share one."""
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = base_id, 1
    while True:
        try:
            (root / candidate).mkdir()
            return root / candidate
        except FileExistsError:
            n += 1
            candidate = f"{base_id}-{n}"


def read_experiment_metadata(exp_dir: str | os.PathLike) -> dict[str, Any]:
    """The experiment's metadata, or {} when the file is missing, unreadable or not a JSON object."""
    try:
        data = json.loads((Path(exp_dir) / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_device(name: str):
    """"auto" → cuda when available, else cpu; "cpu"; "cuda" / "cuda:N" (TidalError when CUDA cannot serve it)."""
    import torch

    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise TidalError(f"DEVICE must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise TidalError(f"DEVICE {name} requested but CUDA is not available (use DEVICE: auto or cpu)")
    if match.group(1) is None:
        return torch.device("cuda")
    index = int(match.group(1))
    if index >= torch.cuda.device_count():
        raise TidalError(f"DEVICE {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device("cuda", index)
