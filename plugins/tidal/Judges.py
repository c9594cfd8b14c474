"""Held-out judges for the decoding study: n-gram LMs that are neither the generator nor each other.

Pattern: `NGramJudge` is an interpolated Kneser–Ney n-gram LM (Chen & Goodman 1998, one discount per order,
D = n1 / (n1 + 2·n2)) over GPT-2 token ids, built from a flat token stream with numpy and queried with sorted keys +
searchsorted, as RewardComputer's bigram coherence is. Trade-offs:
- Keys are exact, never hashed: a k-gram is the mixed-radix number Σ t_i·V^(k−1−i), and V^4 = 50,257^4 ≈ 6.4e18
  < 2^63, so orders up to 4 fit an int64 with no collision. Higher orders would need hashing; at ~1.5 M training
  tokens 5-grams are too sparse to help, so order is capped at 4. The history of a k-gram key is key // V.
- Kneser–Ney rather than plain absolute discounting: lower orders count distinct left contexts, which is what a
  backed-off estimate should measure (Kneser & Ney 1995); it costs one extra np.unique per order.
- The recursion ends in a unigram interpolated with the uniform distribution over the whole vocabulary, so every
  token has probability > 0, and each level is normalised, so p(· | h) sums to one over the vocabulary.
- Every text starts after `bos_id` (EOT, as between the stories of the corpus stream), so a story's first tokens are
  scored as story starts; `logprob_next` and `score` share one lookup over (history window, token) rows.
- Tables live as numpy arrays (cached as .npz); torch views are moved to the caller's device on first use, so the
  RL reward can call `logprob_next` per step on the GPU without a host round trip.

`_corpus` picks each role's stories so that they are disjoint from the generator's data and from the other
role's (see its docstring); `build_judge` builds or loads the judge from DATA_CACHE_DIR.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from core.errors import TidalError
from core.io import atomic_path
from plugins.tidal.Config import LMConfig
from plugins.tidal.DataPipeline import (
    BUILTIN_DATASET,
    EOT_TOKEN_ID,
    TOKENIZER_SHA256,
    VOCAB_SIZE,
    TinyTales,
    get_tokenizer,
    load_stories,
)
from plugins.tidal.Utils import resolve_project_path

MAX_ORDER = 4                                 # exact int64 keys up to V^4 (see the module docstring)
JUDGE_ROLES = ("train", "eval")               # the RL reward's judge and the study's judge
_ROLE_SEED_OFFSETS = {"train": 1000, "eval": 2000}
_FORMAT_VERSION = 1                           # bump when the .npz layout or the estimator changes
_FALLBACK_DISCOUNT = 0.5                      # when a table has no count-1 or count-2 n-grams (tiny corpora)
_DISCOUNT_RANGE = (0.05, 0.95)                # keeps every level's backoff mass, hence every probability, > 0


def ngram_keys(tokens: np.ndarray, k: int, vocab_size: int) -> np.ndarray:
    """Exact int64 keys of the k-grams starting at positions 0 .. len−k (k ≤ 4)."""
    count = len(tokens) - k + 1
    keys = tokens[:count].astype(np.int64)
    for j in range(1, k):
        keys = keys * vocab_size + tokens[j:j + count]
    return keys


def _discount(counts: np.ndarray) -> float:
    n1, n2 = int((counts == 1).sum()), int((counts == 2).sum())
    d = n1 / (n1 + 2 * n2) if n1 and n2 else _FALLBACK_DISCOUNT
    return float(np.clip(d, *_DISCOUNT_RANGE))


class NGramJudge:
    """An interpolated Kneser–Ney LM of order ≤ 4 over token ids in [0, vocab_size).

    For order k ≥ 2 the tables hold the sorted unique k-gram keys with their counts (raw at the top order,
    distinct-left-context counts below), and per history h (a (k−1)-gram): its total count and how many distinct
    tokens follow it. p_k(w | h) = (max(c(h w) − D_k, 0) + D_k · types(h) · p_{k−1}(w | h')) / total(h), and
    p_k = p_{k−1} when h was never seen; p_1(w) = (max(c(w) − D_1, 0) + D_1 · types / V) / total.
    """

    def __init__(self, arrays: dict[str, np.ndarray], provenance: dict | None = None):
        self._arrays = arrays
        self.order = int(arrays["order"])
        self.vocab_size = int(arrays["vocab_size"])
        bos = int(arrays["bos_id"])
        self.bos_id = None if bos < 0 else bos
        self.num_tokens = int(arrays["num_tokens"])
        counts_1 = arrays["counts_1"]
        self._unigram_total, self._unigram_types = float(counts_1.sum()), float((counts_1 > 0).sum())
        self.provenance = dict(provenance or {})
        self._torch: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def from_tokens(cls, tokens: np.ndarray, vocab_size: int = VOCAB_SIZE, order: int = MAX_ORDER,
                    bos_id: int | None = EOT_TOKEN_ID, provenance: dict | None = None) -> NGramJudge:
        """Count a flat token stream (texts joined by `bos_id`, which should also lead the stream)."""
        if not 1 <= order <= MAX_ORDER:
            raise ValueError(f"order must be in [1, {MAX_ORDER}] (exact int64 keys), got {order}")
        tokens = np.asarray(tokens).astype(np.int64)
        if tokens.ndim != 1 or tokens.size < order:
            raise ValueError(f"need a flat stream of at least {order} tokens")
        if tokens.min() < 0 or tokens.max() >= vocab_size or (bos_id is not None and not 0 <= bos_id < vocab_size):
            raise ValueError(f"token ids (and bos_id) must lie in [0, {vocab_size})")
        # the scalars as 0-d int64 arrays, as `load` reads them back
        arrays: dict[str, np.ndarray] = {
            name: np.array(value, dtype=np.int64)
            for name, value in (("order", order), ("vocab_size", vocab_size), ("num_tokens", tokens.size),
                                ("bos_id", -1 if bos_id is None else bos_id))}
        discounts = np.zeros(order + 1)
        higher_first: np.ndarray | None = None  # first positions of the unique (k+1)-grams
        for k in range(order, 0, -1):
            all_keys = ngram_keys(tokens, k, vocab_size)
            keys, first, raw_counts = np.unique(all_keys, return_index=True, return_counts=True)  # sorted
            if higher_first is None:
                counts = raw_counts
            else:  # Kneser–Ney: how many distinct tokens precede the k-gram (its suffix position is p + 1)
                counts = np.bincount(np.searchsorted(keys, all_keys[higher_first + 1]), minlength=keys.size)
            higher_first = first
            discounts[k] = _discount(counts[counts > 0])
            arrays[f"keys_{k}"], arrays[f"counts_{k}"] = keys, counts.astype(np.int64)
            if k == 1:
                arrays["dense_1"] = np.bincount(keys, weights=counts, minlength=vocab_size).astype(np.int64)
                continue
            hist_keys, starts = np.unique(keys // vocab_size, return_index=True)  # keys sorted => histories sorted
            arrays[f"hist_keys_{k}"] = hist_keys
            arrays[f"hist_total_{k}"] = np.add.reduceat(counts, starts).astype(np.int64)
            arrays[f"hist_types_{k}"] = np.add.reduceat((counts > 0).astype(np.int64), starts)
        arrays["discounts"] = discounts
        return cls(arrays, provenance)

    @classmethod
    def from_texts(cls, texts: Sequence[str], order: int = MAX_ORDER, provenance: dict | None = None,
                   num_threads: int = 1) -> NGramJudge:
        """GPT-2 tokens of the texts, each preceded by EOT and the stream closed by one (as the LM's corpus)."""
        encoded = get_tokenizer().encode_ordinary_batch(list(texts), num_threads=num_threads)
        stream = np.fromiter((t for ids in encoded for t in [EOT_TOKEN_ID, *ids]), dtype=np.int64)
        return cls.from_tokens(np.append(stream, EOT_TOKEN_ID), VOCAB_SIZE, order, EOT_TOKEN_ID, provenance)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            # numpy's stub: an unpacked dict[str, ndarray] might name the `allow_pickle: bool` keyword (ours never do)
            np.savez(f, provenance=np.array(json.dumps(self.provenance)), **self._arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> NGramJudge:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        return cls(arrays, json.loads(str(arrays.pop("provenance"))))

    # ------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def logprob_next(self, history: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ln p(tokens[b] | the first lengths[b] tokens of history[b]) as float32 (B,), on history's device.
        history (B, H) is padded with −1 on the right; the text is taken to start after bos_id."""
        history = history.long()
        width = self.order - 1
        lead = torch.full((history.shape[0], width), -1, dtype=torch.long, device=history.device)
        if self.bos_id is not None and width:
            lead[:, -1] = self.bos_id
        padded = torch.cat([lead, history], dim=1)                                   # (B, width + H)
        columns = lengths.long().to(history.device).unsqueeze(1) + torch.arange(width, device=history.device)
        windows = torch.gather(padded, 1, columns)                                   # (B, width): last tokens
        return self._logprob(windows, tokens.long().to(history.device)).float()

    def score(self, context: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """ln p of each continuation token given the context and the tokens before it (float64, len(continuation))."""
        return self.score_many([(context, continuation)])[0]

    def score_many(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[np.ndarray]:
        """`score` for many (context, continuation) pairs in one batched lookup."""
        if not pairs:
            return []
        windows, tokens = zip(*(self._windows(context, continuation) for context, continuation in pairs), strict=True)
        logp = self._logprob(torch.from_numpy(np.concatenate(windows)), torch.from_numpy(np.concatenate(tokens)))
        return np.split(logp.numpy(), np.cumsum([len(t) for t in tokens])[:-1])

    def precision(self, tokens: Sequence[int], n: int, context: Sequence[int] = ()) -> float:
        """Share of the n-grams ending in `tokens` (so those joining the context's last n−1 tokens count) that occur in
        the judge's corpus; NaN when there is none."""
        if not 1 <= n <= self.order:
            raise ValueError(f"precision needs 1 <= n <= the judge's order {self.order}, got {n}")
        text = np.asarray(list(context)[max(len(context) - (n - 1), 0):] + list(tokens), dtype=np.int64)
        if len(tokens) == 0 or text.size < n:
            return float("nan")
        keys = ngram_keys(text, n, self.vocab_size)
        table = self._arrays[f"keys_{n}"]
        found = table[np.searchsorted(table, keys).clip(max=table.size - 1)] == keys
        return float(found.mean())

    def _windows(self, context: Sequence[int], continuation: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The (len(continuation), order−1) windows of tokens before each continuation token, −1 where none."""
        width = self.order - 1
        lead = [-1] * width + ([] if self.bos_id is None else [self.bos_id])
        text = np.asarray(lead + list(context) + list(continuation), dtype=np.int64)
        start = len(lead) + len(context)  # index of the first continuation token in text
        if width == 0:
            return np.zeros((len(continuation), 0), np.int64), text[start:]
        windows = np.lib.stride_tricks.sliding_window_view(text[:-1], width)[start - width:]
        return windows, text[start:]

    def _logprob(self, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ln p(token | window) (float64) for rows of windows (Q, order−1), right-aligned, −1 where no token.

        Every order at once: the histories of orders 2..n are the cumulative keys of the window read backwards, and
        one search in each combined table (`_tables`) finds them all. The recursion p_k = (max(c − D, 0) + D·types·
        p_{k−1}) / total is then p_k = A_k + B_k·p_{k−1}, with A_k = 0 and B_k = 1 where the history is unseen."""
        t = self._tables(tokens.device)
        V = self.vocab_size
        d1 = float(self._arrays["discounts"][1])
        p = ((t["dense_1"][tokens] - d1).clamp_min(0) + d1 * self._unigram_types / V) / self._unigram_total
        if self.order == 1:
            return torch.log(p)
        back = windows.flip(1)                                                  # nearest token first
        hist_key = (back.clamp_min(0) * t["powers"]).cumsum(dim=1)              # (Q, order−1): order k in column k−2
        valid = back >= 0  # right-aligned windows: a missing token has only missing tokens before it
        at, found = _find(t["hist_keys"], hist_key + t["hist_offsets"])
        total, types = t["hist_total"][at], t["hist_types"][at]
        at_gram, found_gram = _find(t["keys"], hist_key * V + tokens.unsqueeze(1) + t["offsets"])
        count = torch.where(found_gram, t["counts"][at_gram], 0.0)
        seen = valid & found & (total > 0)
        d = t["discounts"]
        a = torch.where(seen, (count - d).clamp_min(0) / total.clamp_min(1), 0.0)
        b = torch.where(seen, d * types / total.clamp_min(1), 1.0)
        for k in range(self.order - 1):
            p = torch.addcmul(a[:, k], b[:, k], p)
        return torch.log(p)

    def _tables(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The tables as torch tensors on `device` (built once per device): the unigram counts, and the keys, counts,
        history totals and types of orders 2..n concatenated into one sorted table each. An order-k key is offset
        past every lower order's key range (n-grams by Σ_{2≤j<k} V^j, histories by Σ_{1≤j<k−1} V^j), so the tables
        stay sorted and distinct; at order 4 the largest offset key is V⁴ + V³ + V² < 2⁶³. Counts in float64."""
        if not self._torch or self._torch["dense_1"].device != device:
            V, orders = self.vocab_size, range(2, self.order + 1)
            arrays = self._arrays
            offsets = [sum(V ** j for j in range(2, k)) for k in orders]
            hist_offsets = [sum(V ** j for j in range(1, k - 1)) for k in orders]

            def joined(name: str, shifts: list[int] | None = None) -> torch.Tensor:
                parts = [arrays[f"{name}_{k}"] + (shifts[i] if shifts else 0) for i, k in enumerate(orders)]
                return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, np.int64))

            self._torch = {name: tensor.to(device) for name, tensor in {
                "dense_1": torch.from_numpy(arrays["dense_1"]).double(),
                "keys": joined("keys", offsets), "counts": joined("counts").double(),
                "hist_keys": joined("hist_keys", hist_offsets), "hist_total": joined("hist_total").double(),
                "hist_types": joined("hist_types").double(),
                "offsets": torch.tensor(offsets, dtype=torch.long),
                "hist_offsets": torch.tensor(hist_offsets, dtype=torch.long),
                "powers": torch.tensor([V ** j for j in range(self.order - 1)], dtype=torch.long),
                "discounts": torch.from_numpy(arrays["discounts"][2:]).double(),
            }.items()}
        return self._torch


def _find(keys: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each query would sit in sorted, non-empty `keys` (a valid index), and whether it is there."""
    idx = torch.searchsorted(keys, query).clamp_max(keys.numel() - 1)
    return idx, keys[idx] == query


# =============================================================================================== corpora
def _corpus(lm_config: LMConfig | Mapping, role: str, num_stories: int) -> tuple[dict, Callable[[], list[str]]]:
    """The provenance of the stories of one judge role ("train": the RL reward's judge; "eval": the study's judge)
    and how to fetch them (builtin provenance needs no story generated, so a cached judge loads without generating
    its corpus).

    builtin:tinytales: TinyTales(SEED + 1000) for "train", TinyTales(SEED + 2000) for "eval", stories 0 .. n−1 —
    other generator draws than the LM's corpus and the study's prompts (TinyTales(SEED)), and than each other.
    Other sources: disjoint shards from the end of the full train split — "eval" the last num_stories, "train" the
    num_stories before them. The LM must then have been trained on at most len(train) − 2·num_stories stories
    (MAX_STORIES), which reads the split from its start; otherwise this raises TidalError.
    """
    if role not in JUDGE_ROLES:
        raise ValueError(f"judge role must be one of {JUDGE_ROLES}, got {role!r}")
    if num_stories < 1:
        raise ValueError(f"num_stories must be >= 1, got {num_stories}")
    lm_config = LMConfig.of(lm_config)
    source = lm_config.DATASET
    if source == BUILTIN_DATASET:
        seed = lm_config.SEED + _ROLE_SEED_OFFSETS[role]
        return ({"source": source, "seed": seed, "role": role, "num_stories": num_stories,
                 "tinytales_version": TinyTales.VERSION}, lambda: TinyTales(seed).stories(0, num_stories))
    stories = load_stories(lm_config.replace(MAX_STORIES=None), "train")
    lm_stories = lm_config.MAX_STORIES
    held_out = len(stories) - (len(stories) if lm_stories is None else min(lm_stories, len(stories)))
    if held_out < 2 * num_stories:
        raise TidalError(f"the judges need 2 x {num_stories} train-split stories the LM did not read, but only "
                         f"{held_out} of {len(stories)} are beyond MAX_STORIES={lm_stories}; train the LM with "
                         f"MAX_STORIES <= {len(stories) - 2 * num_stories} or use fewer judge stories")
    end = len(stories) - (0 if role == "eval" else num_stories)
    shard = stories[end - num_stories:end]
    fingerprint = hashlib.sha256("\x00".join(shard).encode()).hexdigest()  # a cached judge follows edits to the data
    return ({"source": source, "seed": None, "role": role, "num_stories": num_stories,
             "train_split_range": [end - num_stories, end], "texts_sha256": fingerprint}, lambda: shard)


def build_judge(lm_config: LMConfig | Mapping, role: str, num_stories: int, order: int = MAX_ORDER) -> NGramJudge:
    """The judge of `role` over the stories `_corpus` picks, loaded from DATA_CACHE_DIR when an identical build is
    cached."""
    lm_config = LMConfig.of(lm_config)
    provenance, fetch = _corpus(lm_config, role, num_stories)
    identity = {**provenance, "order": order, "format": _FORMAT_VERSION, "tokenizer": TOKENIZER_SHA256}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = resolve_project_path(lm_config.DATA_CACHE_DIR) / f"judge-{role}-{digest}.npz"
    if path.exists():
        return NGramJudge.load(path)
    judge = NGramJudge.from_texts(fetch(), order, provenance, lm_config.NUM_CPU_CORE_WORKERS)
    judge.save(path)
    return judge
