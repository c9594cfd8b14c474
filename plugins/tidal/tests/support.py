"""Test support for the plugin's suites: tiny configs, a temporary directory per test, subprocess helpers.

Import as `from plugins.tidal.tests.support import ...`. The plugin's tests import only this, `core` and the plugin
(never `tests.support`, which is a layer above); `tests/support.py` imports these helpers from here.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

from core.paths import PROJECT_ROOT
from plugins.tidal.Utils import BASE_CONFIG_PATH, RL_CONFIG_PATH, read_yaml

PYTHON = sys.executable

# A model small enough for a CPU test to train a few steps in well under a second, but with every component.
TINY_MODEL = {
    "EMBED_DIM": 32, "NUM_TRANSFORMER_BLOCKS": 2, "NUM_ATTENTION_HEADS": 4, "FFN_HIDDEN_DIM": 64,
    "MAX_CONTEXT_LENGTH": 32, "DROPOUT": 0.0,
}


def base_config(**overrides) -> dict:
    config = copy.deepcopy(read_yaml(BASE_CONFIG_PATH))
    config.update(overrides)
    return config


def tiny_config(**overrides) -> dict:
    """The base config with a tiny model, the built-in corpus, CPU, fp32 and no compile."""
    config = base_config(**TINY_MODEL)
    config.update({
        "DATASET": "builtin:tinytales", "BUILTIN_NUM_STORIES": 200, "DEVICE": "cpu", "TORCH_COMPILE": False,
        "AMP_DTYPE": "fp32", "BATCH_SIZE": 8, "DESIRED_BATCH_SIZE": 8, "EVAL_BATCH_SIZE": 8, "NUM_EPOCHS": 1,
        "EVAL_INTERVAL": 5, "EVAL_MAX_BATCHES": 2, "EVAL_MAX_NEW_TOKENS": 8, "NUM_CPU_CORE_WORKERS": 1,
    })
    config.update(overrides)
    return config


def rl_config(**overrides) -> dict:
    config = copy.deepcopy(read_yaml(RL_CONFIG_PATH))
    config.update(overrides)
    return config


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.1f} s waiting for {message}")


def run_python(*args: str, timeout: float = 120, env: dict | None = None, cwd: str | os.PathLike = PROJECT_ROOT
               ) -> subprocess.CompletedProcess:
    """Run `python <args>` from the project root and capture its output as text."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([PYTHON, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


class TempDirTestCase(unittest.TestCase):
    """Gives each test a fresh temporary directory in `self.tmp` (a Path), removed afterwards."""

    def setUp(self) -> None:
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory(prefix="tidal-test-")
        self.tmp = Path(self._tmp.name)
        self.addCleanup(self._tmp.cleanup)
