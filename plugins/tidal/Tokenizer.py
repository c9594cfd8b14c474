"""The GPT-2 tokenizer, built offline from the ranks file shipped in assets/ and checked against its sha256.

The token cache, the generator, the judges and the RL environment all need its ids and constants (EOT, vocabulary
size); it is separate so that they can have them without the corpus, the story sources or torch.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from core.errors import TidalError
from plugins.tidal.Utils import PLUGIN_DIR

EOT_TOKEN_ID = 50256
VOCAB_SIZE = 50257
EOT_TEXT = "<|endoftext|>"
TOKENIZER_PATH = PLUGIN_DIR / "assets" / "gpt2.tiktoken"
TOKENIZER_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def get_tokenizer(path: str | os.PathLike | None = None) -> tiktoken.Encoding:
    """The GPT-2 BPE encoding built from the shipped ranks file (never the network); one instance per path."""
    return _load_tokenizer(str(Path(path or TOKENIZER_PATH).resolve()))


@functools.cache
def _load_tokenizer(path: str) -> tiktoken.Encoding:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise TidalError(f"GPT-2 tokenizer ranks not found at {path}; the file ships with Tidal as "
                         "plugins/tidal/assets/gpt2.tiktoken — restore it from git") from None
    except OSError as exc:
        raise TidalError(f"cannot read GPT-2 tokenizer ranks at {path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_SHA256:
        raise TidalError(f"GPT-2 tokenizer ranks at {path} are corrupted: sha256 {digest}, expected "
                         f"{TOKENIZER_SHA256} — restore the file from git")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT_TEXT: EOT_TOKEN_ID}, explicit_n_vocab=VOCAB_SIZE)


def encode_prompt(text: str) -> list[int]:
    """Token ids of user text; `<|endoftext|>` written in the text stays ordinary text, never the EOT id."""
    return get_tokenizer().encode_ordinary(text)


def decode(ids: Sequence[int]) -> str:
    return get_tokenizer().decode([int(i) for i in ids])
