"""Tests for Tokenizer: known GPT-2 ids, offline loading, the asset's hash check, prompt helpers.

Also home of the helpers the other data-pipeline test modules share: a temp-dir test case with a cache directory and
a context manager that makes any network access fail.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from core.errors import TidalError
from plugins.tidal import Tokenizer as tk

ASSET = Path(tk.__file__).resolve().parent / "assets" / "gpt2.tiktoken"


class TempDirTestCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = Path(tmp.name)
        self.cache_dir = self.tmp / "cache"


def _network_disabled(*args, **kwargs):
    raise OSError("network access attempted in a test")


class NoNetwork:
    """Patch the socket layer so any connection attempt (DNS included) fails at once."""

    def __enter__(self):
        self._patches = [mock.patch.object(socket.socket, "connect", _network_disabled),
                         mock.patch.object(socket, "getaddrinfo", _network_disabled),
                         mock.patch.object(socket, "create_connection", _network_disabled)]
        for p in self._patches:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in reversed(self._patches):
            p.stop()


class TokenizerTest(TempDirTestCase):
    def test_known_gpt2_ids_and_vocab(self):
        enc = tk.get_tokenizer()
        self.assertEqual(enc.encode("Once upon a time"), [7454, 2402, 257, 640])
        self.assertEqual(enc.encode("Hello world"), [15496, 995])
        self.assertEqual(enc.encode("<|endoftext|>", allowed_special="all"), [tk.EOT_TOKEN_ID])
        self.assertEqual(tk.EOT_TOKEN_ID, 50256)
        self.assertEqual(enc.n_vocab, tk.VOCAB_SIZE)
        self.assertEqual(tk.VOCAB_SIZE, 50257)

    def test_tokenizer_is_cached_per_process(self):
        self.assertIs(tk.get_tokenizer(), tk.get_tokenizer())

    def test_prompt_helpers_round_trip_and_never_emit_eot_from_text(self):
        text = "Mom said to Lily, \"Let's go!\""
        self.assertEqual(tk.decode(tk.encode_prompt(text)), text)
        self.assertNotIn(tk.EOT_TOKEN_ID, tk.encode_prompt("the end <|endoftext|> again"))

    def test_loads_with_networking_disabled(self):
        copy = self.tmp / "gpt2.tiktoken"
        shutil.copyfile(ASSET, copy)
        with NoNetwork():
            enc = tk.get_tokenizer(copy)
            self.assertEqual(enc.encode("Once upon a time"), [7454, 2402, 257, 640])

    def test_corrupted_asset_raises_clear_error(self):
        copy = self.tmp / "gpt2.tiktoken"
        data = bytearray(ASSET.read_bytes())
        data[10] ^= 0x01
        copy.write_bytes(bytes(data))
        with self.assertRaisesRegex(TidalError, "sha256"):
            tk.get_tokenizer(copy)

    def test_missing_asset_raises_clear_error(self):
        with self.assertRaisesRegex(TidalError, "not found"):
            tk.get_tokenizer(self.tmp / "absent.tiktoken")


if __name__ == "__main__":
    unittest.main()
