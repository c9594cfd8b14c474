"""Story sources: every DATASET a config can name (builtin:tinytales, local .txt/.jsonl/.parquet files, a saved
`datasets` directory, a Hugging Face dataset) read as a list of story texts, and the one rule that splits them.

Separate from the token cache: this module decides which stories make up a split; what is done with their text
(tokenizing, caching) is not its concern.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import TidalError
from plugins.tidal.Config import LMConfig
from plugins.tidal.TinyTales import TinyTales
from plugins.tidal.Tokenizer import EOT_TEXT
from plugins.tidal.Utils import resolve_project_path

SPLITS = ("train", "validation")
BUILTIN_DATASET = "builtin:tinytales"


@dataclass(frozen=True)
class _Stories:
    """A story table that fetches rows by index, so a split or a cap never materialises rows it does not use."""
    count: int
    fetch: Callable[[list[int]], list[str]]

    @classmethod
    def of_list(cls, texts: list[str]) -> _Stories:
        return cls(len(texts), lambda indices: [texts[i] for i in indices])


def load_stories(config: LMConfig | Mapping, split: str) -> list[str]:
    """The stories of one split: the source's own split when it has train and validation, else a deterministic
    VALIDATION_SPLIT_RATIO share chosen with SEED; at most MAX_STORIES when that is set."""
    _check_split(split)
    config = LMConfig.of(config)
    tables = _open_source(config)
    if "validation" in tables:
        rows = tables[split]
        indices = list(range(rows.count))
    else:
        rows = tables["train"]
        indices = _ratio_split(rows.count, split, config.VALIDATION_SPLIT_RATIO, config.SEED)
    if config.MAX_STORIES is not None:
        indices = indices[:config.MAX_STORIES]
    return rows.fetch(indices)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _ratio_split(n: int, split: str, ratio: float, seed: int) -> list[int]:
    """`split`'s share of n items; `ratio` in [0, 1) (LMConfig checks VALIDATION_SPLIT_RATIO)."""
    n_validation = round(n * ratio)
    if ratio > 0 and n >= 2:  # a non-zero ratio always yields both splits, however few the stories
        n_validation = min(max(n_validation, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    chosen = order[:n_validation] if split == "validation" else order[n_validation:]
    return sorted(chosen.tolist())


def _open_source(config: LMConfig) -> dict[str, _Stories]:
    """{"train": ...} for a source without splits, {"train": ..., "validation": ...} for one with both."""
    name = config.DATASET
    if name == BUILTIN_DATASET:
        tales = TinyTales(config.SEED)
        return {"train": _Stories(config.BUILTIN_NUM_STORIES, lambda ids: [tales.story(i) for i in ids])}
    path = resolve_project_path(name)
    if path.is_file():
        reader = _FILE_READERS.get(path.suffix.lower())
        if reader is None:
            raise TidalError(f"unsupported dataset file type {path.suffix!r} ({path}); use .txt, .jsonl, .parquet, "
                             f"a datasets directory, {BUILTIN_DATASET} or a Hugging Face dataset name")
        return {"train": _Stories.of_list(reader(path))}
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        import datasets

        return _hf_tables(datasets.load_from_disk(str(path)), name)
    if path.suffix.lower() in _FILE_READERS:
        raise TidalError(f"dataset file not found: {path}")
    # a hub name, or a directory of raw data files that `datasets` knows how to read
    return _hf_tables(_load_dataset(str(path) if path.is_dir() else name), name)


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    parts = text.split(EOT_TEXT) if EOT_TEXT in text else re.split(r"\n[ \t]*\n", text)
    return [p.strip() for p in parts if p.strip()]


def _read_jsonl(path: Path) -> list[str]:
    stories = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TidalError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise TidalError(f"{path}:{line_number}: expected an object with a string \"text\" field")
            stories.append(text)
    return stories


def _read_parquet(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    columns = pq.read_schema(path).names
    if "text" not in columns:
        raise TidalError(f"{path}: no \"text\" column (columns: {', '.join(columns)})")
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


_FILE_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


HUB_PROBE_TIMEOUT_S = 3.0   # one connection attempt to the hub, instead of its client's ~30 s of retries


def _load_dataset(name: str):
    import datasets

    unreachable = None if Path(name).is_dir() else _hub_unreachable()
    try:
        # an unreachable hub: only the local cache is tried (offline mode), so the run fails at once, not after
        # a minute of retries
        with _hub_offline(unreachable is not None):
            return datasets.load_dataset(name)
    except Exception as exc:  # the hub client fails in many types (connection, HTTP, not-found, offline mode)
        cause = (str(exc).splitlines() or [""])[0]
        where = (f"the Hugging Face Hub is unreachable ({unreachable}) and it is not in the local cache"
                 if unreachable else f"it is not available offline or could not be loaded ({type(exc).__name__}: "
                                     f"{cause})")
        raise TidalError(f"dataset {name!r}: {where}; use DATASET: {BUILTIN_DATASET} or a local "
                         f".txt/.jsonl/.parquet file or datasets directory") from exc


def _hub_unreachable() -> str | None:
    """Why the hub cannot be reached (its endpoint does not accept a connection within HUB_PROBE_TIMEOUT_S), or
    None when it can, when offline mode is already on, or behind a proxy (only the client can test that path)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                                                                     "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    outcome: list[str | None] = []

    def probe():  # in a thread: a name lookup ignores socket timeouts
        try:
            socket.create_connection(address, timeout=HUB_PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"{constants.ENDPOINT}: {exc.strerror or type(exc).__name__}")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 0.5)
    return outcome[0] if outcome else f"{constants.ENDPOINT}: no answer within {HUB_PROBE_TIMEOUT_S:.0f} s"


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Offline mode for the `datasets` and `huggingface_hub` calls inside (both read the flag at call time)."""
    import datasets.config
    from huggingface_hub import constants

    if not offline:
        yield
        return
    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _hf_tables(loaded, name: str) -> dict[str, _Stories]:
    import datasets

    splits = {s: loaded[s] for s in SPLITS if s in loaded} if isinstance(loaded, datasets.DatasetDict) \
        else {"train": loaded}
    if "train" not in splits:
        raise TidalError(f"dataset {name!r} has no 'train' split (it has: {', '.join(loaded)})")
    return {split: _hf_stories(ds, name) for split, ds in splits.items()}


def _hf_stories(ds, name: str) -> _Stories:
    if "text" not in ds.column_names:
        raise TidalError(f"dataset {name!r} has no \"text\" column (columns: {', '.join(ds.column_names)})")
    return _Stories(len(ds), lambda indices: ds.select(indices).with_format("arrow")["text"].to_pylist())
