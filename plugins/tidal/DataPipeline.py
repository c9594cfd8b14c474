"""Data for the Tidal LM: TokenDataset, the chunked view of one split that the trainer and evaluator read.

The data pipeline is split by concept, each module importing only those before it:
  Tokenizer (offline, hash-checked GPT-2)  ->  TinyTales (`builtin:tinytales`, ADR 0004)  ->  DataSources
  (load_stories: every source, one split rule)  ->  TokenCache (uint16 file + JSON sidecar, ADR 0003)  ->
  TokenDataset (here).
The public names of those modules are re-exported, so `from plugins.tidal.DataPipeline import X` keeps working.
The decoding study's prompt sets live in StudyData.py.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import TidalError
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataSources import BUILTIN_DATASET, HUB_PROBE_TIMEOUT_S, SPLITS, _check_split, load_stories
from plugins.tidal.TinyTales import TinyTales
from plugins.tidal.TokenCache import CACHE_FORMAT_VERSION, _cache_file_name, _cache_key, _ensure_token_cache, log
from plugins.tidal.Tokenizer import (
    EOT_TEXT,
    EOT_TOKEN_ID,
    GPT2_SPLIT_PATTERN,
    TOKENIZER_PATH,
    TOKENIZER_SHA256,
    VOCAB_SIZE,
    decode,
    encode_prompt,
    get_tokenizer,
)
from plugins.tidal.Utils import resolve_project_path

__all__ = ["BUILTIN_DATASET", "CACHE_FORMAT_VERSION", "EOT_TEXT", "EOT_TOKEN_ID", "GPT2_SPLIT_PATTERN",
           "HUB_PROBE_TIMEOUT_S", "SPLITS", "TOKENIZER_PATH", "TOKENIZER_SHA256", "TinyTales", "TokenDataset",
           "VOCAB_SIZE", "decode", "encode_prompt", "get_tokenizer", "load_stories", "log"]


class TokenDataset(Dataset):
    """One split as non-overlapping chunks of MAX_CONTEXT_LENGTH+1 tokens; item i is (chunk[:-1], chunk[1:]).

    The flat token stream (`story EOT story EOT ...`) lives in a memory-mapped uint16 cache built on first use.
    """

    def __init__(self, config: LMConfig | Mapping, split: str, cache_dir: str | os.PathLike | None = None,
                 progress: bool = True):
        _check_split(split)
        config = LMConfig.of(config)
        self.split = split
        self.context_length = config.MAX_CONTEXT_LENGTH
        key = _cache_key(config, split)
        directory = Path(cache_dir) if cache_dir is not None else resolve_project_path(config.DATA_CACHE_DIR)
        self.cache_path = directory / _cache_file_name(config, split, key)
        _ensure_token_cache(self.cache_path, key, lambda: load_stories(config, split),
                           num_threads=config.NUM_CPU_CORE_WORKERS, progress=progress)
        self._map()
        if self.num_tokens < self.context_length + 1:
            raise TidalError(f"the {split} split has {self.num_tokens} tokens, fewer than one chunk of "
                             f"MAX_CONTEXT_LENGTH+1 = {self.context_length + 1}; use more stories or a shorter "
                             "context")

    def _map(self) -> None:
        self.tokens = np.memmap(self.cache_path, dtype="<u2", mode="r")
        self.num_tokens = len(self.tokens)

    def __len__(self) -> int:
        return self.num_tokens // (self.context_length + 1)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"chunk {index} out of range for {n} chunks")
        start = index * (self.context_length + 1)
        chunk = torch.from_numpy(self.tokens[start:start + self.context_length + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks `indices` as one (B, T) input and one (B, T) target int64 tensor, the same as stacking items,
        gathered from the memmap in one copy instead of one Python call per item."""
        span = self.context_length + 1
        rows = self.tokens[:len(self) * span].reshape(-1, span)  # (num_chunks, T+1), a view
        chunks = torch.from_numpy(rows[np.asarray(indices, dtype=np.int64)].astype(np.int64))  # (B, T+1)
        return chunks[:, :-1], chunks[:, 1:]

    # DataLoader workers started with spawn receive a pickled dataset: send the path and re-map, never the tokens
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "tokens"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._map()
