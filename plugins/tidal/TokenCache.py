"""The token cache: a split's token stream (`story EOT story EOT ...`) as a raw uint16 file with a JSON sidecar that
records its key (ADR 0003).

Separate from the sources and the dataset: it owns the on-disk format (its key, file name, validity checks and
atomic build), while the sources say which stories go in and TokenDataset only maps the finished file.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.errors import TidalError
from core.io import atomic_path, atomic_write_json
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataSources import BUILTIN_DATASET
from plugins.tidal.TinyTales import TinyTales
from plugins.tidal.Tokenizer import EOT_TOKEN_ID, TOKENIZER_SHA256, get_tokenizer
from plugins.tidal.Utils import resolve_project_path

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
_CACHE_DTYPE = "uint16"      # GPT-2 ids < 65,536 (ADR 0003)
_TOKENIZE_BATCH = 2048       # stories per encode_ordinary_batch call: enough to keep every thread busy


def _source_identity(config: LMConfig) -> dict:
    name = config.DATASET
    if name == BUILTIN_DATASET:
        return {"builtin": "tinytales", "version": TinyTales.VERSION,
                "num_stories": config.BUILTIN_NUM_STORIES}
    path = resolve_project_path(name)
    if not path.exists():
        return {"hub": name}
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    stats = [p.stat() for p in files]
    return {"path": str(path.resolve()), "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def _cache_key(config: LMConfig, split: str) -> dict:
    """Everything that decides the split's token stream; MAX_CONTEXT_LENGTH is not in it (chunking is a view)."""
    return {"format_version": CACHE_FORMAT_VERSION, "dtype": _CACHE_DTYPE, "tokenizer_sha256": TOKENIZER_SHA256,
            "source": _source_identity(config), "split": split, "max_stories": config.MAX_STORIES,
            "validation_split_ratio": config.VALIDATION_SPLIT_RATIO, "seed": config.SEED}


def _cache_file_name(config: LMConfig, split: str, key: dict) -> str:
    name = config.DATASET
    stem = "tinytales" if name == BUILTIN_DATASET else Path(name).stem or name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:40] or "dataset"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{slug}-{split}-{digest}.u16"


def _sidecar(raw_path: Path) -> Path:
    return raw_path.with_suffix(".json")


def _cache_problem(raw_path: Path, key: dict) -> str | None:
    """Why the cache at raw_path cannot be used as is (None when it can)."""
    sidecar = _sidecar(raw_path)
    if not sidecar.exists():
        return "absent" if not raw_path.exists() else "no sidecar (an interrupted build?)"
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable sidecar"
    if not isinstance(meta, dict):
        return "unreadable sidecar"
    if meta.get("dtype") != _CACHE_DTYPE:
        return f"sidecar declares dtype {meta.get('dtype')!r}, expected {_CACHE_DTYPE!r}"
    if meta.get("key") != key:
        stale = sorted(k for k in key if (meta.get("key") or {}).get(k) != key[k])
        return f"stale key ({', '.join(stale) or 'format'} changed)"
    if not raw_path.exists():
        return "raw token file missing"
    size = raw_path.stat().st_size
    if size % 2:
        return f"raw file is {size} bytes, not a whole number of uint16 tokens"
    if size != 2 * meta.get("num_tokens", -1):
        return f"raw file holds {size // 2} tokens, sidecar says {meta.get('num_tokens')} (truncated?)"
    return None


def _ensure_token_cache(raw_path: Path, key: dict, stories: Callable[[], list[str]], num_threads: int,
                       progress: bool = True) -> None:
    """Build the cache at raw_path unless a valid one with this key is already there."""
    problem = _cache_problem(raw_path, key)
    if problem is None:
        return
    if problem == "absent":
        log.info("building token cache %s", raw_path)
    else:
        log.warning("token cache %s: %s; rebuilding", raw_path.name, problem)
    texts = stories()
    if not texts:
        raise TidalError(f"no stories in the {key['split']} split of {key['source']}")
    try:
        # the sidecar is the commit marker (written last), so drop it before touching the raw file
        _sidecar(raw_path).unlink(missing_ok=True)
        with atomic_path(raw_path) as tmp, open(tmp, "wb") as f:
            num_tokens = _write_tokens(f, texts, num_threads, progress, key["split"])
        atomic_write_json(_sidecar(raw_path), {"key": key, "dtype": _CACHE_DTYPE, "num_tokens": num_tokens,
                                               "num_stories": len(texts)})
    except OSError as exc:
        raise TidalError(f"cannot write the token cache {raw_path}: {exc.strerror or exc}; set DATA_CACHE_DIR to "
                         "a writable directory") from exc


def _write_tokens(f, stories: list[str], num_threads: int, progress: bool, split: str) -> int:
    encoder = get_tokenizer()
    num_tokens = 0
    with tqdm(total=len(stories), unit="story", desc=f"tokenizing {split}", disable=not progress) as bar:
        for start in range(0, len(stories), _TOKENIZE_BATCH):
            batch = stories[start:start + _TOKENIZE_BATCH]
            encoded = encoder.encode_ordinary_batch(batch, num_threads=num_threads)
            for ids in encoded:
                ids.append(EOT_TOKEN_ID)  # after every story, so the model learns where a story ends
            flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype="<u2", count=sum(map(len, encoded)))
            flat.tofile(f)
            num_tokens += len(flat)
            bar.update(len(batch))
    return num_tokens
