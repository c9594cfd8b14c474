"""Shared plumbing for the Tidal plugin: its paths, configuration, logging, CLI error handling.

Every entry point loads its configuration through `load_config`, so a config with a missing key, a value of the
wrong type or a bad `--set` override fails the same way everywhere: one line naming the file and the key.
Errors, the project root and atomic writes are the base layer's (`core.errors`, `core.paths`, `core.io`).
"""
from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError, TidalError
from core.io import parse_yaml_mapping
from core.paths import PROJECT_ROOT

PLUGIN_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PLUGIN_DIR / "configs"
BASE_CONFIG_PATH = CONFIG_DIR / "base_config.yaml"
RL_CONFIG_PATH = CONFIG_DIR / "rl_config.yaml"


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-6` (PyYAML's 1.1 rules make them strings)."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return parse_yaml_mapping(f, path, ConfigError, "a mapping of KEY: value", _YamlLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`KEY=VALUE` or `PARENT.KEY=VALUE`; VALUE is read as YAML (numbers, booleans, lists, null)."""
    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.load(raw, Loader=_YamlLoader) if raw.strip() else ""
    return key.strip().split("."), value


def apply_overrides(config: dict, overrides: Iterable[str], reference: dict | None = None) -> dict:
    """Set each `KEY=VALUE`; with a `reference`, a key it does not have is refused (a typo must not train silently
    with the default while the run's saved config carries the typo)."""
    for text in overrides:
        keys, value = parse_override(text)
        node, ref = config, reference
        for depth, k in enumerate(keys):
            if ref is not None and k not in ref:
                raise ConfigError(f"--set {text}: {_unknown_key(keys[:depth + 1], ref)}")
            ref = ref.get(k) if isinstance(ref, dict) else None
            if depth == len(keys) - 1:
                break
            if not isinstance(node.get(k), dict):
                raise ConfigError(f"--set {text}: {k} is not a section of the config")
            node = node[k]
        node[keys[-1]] = value
    return config


def _unknown_key(path: list[str], known: dict) -> str:
    """`unknown key A.B; did you mean A.C?`, naming the closest key the reference has at that level."""
    *parents, key = path
    closest = difflib.get_close_matches(key, [str(k) for k in known], n=1, cutoff=0.0)
    hint = f"; did you mean {'.'.join([*parents, closest[0]])}?" if closest else ""
    return f"unknown key {'.'.join(path)}{hint}"


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _compatible(reference: Any, value: Any) -> bool:
    if reference is None or value is None:
        return True  # null in the reference means "optional, any type"; null in a config means "unset"
    if isinstance(reference, bool) or isinstance(value, bool):
        return isinstance(reference, bool) and isinstance(value, bool)
    if isinstance(reference, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(reference))


def validate_against(config: dict, reference: dict, source: str, prefix: str = "") -> None:
    """Every key of the reference config must be present with a value of the same type (ints pass as floats), and
    no other key (see `apply_overrides` for why)."""
    parents = prefix.rstrip(".").split(".") if prefix else []
    for key in config:
        if key not in reference:
            raise ConfigError(f"{source}: {_unknown_key([*parents, str(key)], reference)}")
    for key, ref_value in reference.items():
        name = f"{prefix}{key}"
        if key not in config:
            raise ConfigError(f"{source}: missing key {name}")
        value = config[key]
        if not _compatible(ref_value, value):
            expected = _type_name(ref_value)
            article = "an" if expected[0] in "aeiou" else "a"
            raise ConfigError(f"{source}: {name} must be {article} {expected}, got {_type_name(value)} {value!r}")
        if isinstance(ref_value, dict):
            validate_against(value, ref_value, source, prefix=f"{name}.")


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (),
                reference_path: str | os.PathLike | None = BASE_CONFIG_PATH):
    """Read a YAML config, apply `--set` overrides and validate it: against base_config.yaml (the default) it becomes
    an `LMConfig`, against rl_config.yaml an `RLConfig` (plugins/tidal/Config.py: typed, read-only mappings); against
    another reference file it is checked for that file's keys and types and stays a dict; with None, unchecked."""
    config = read_yaml(path)
    if reference_path is None:
        return apply_overrides(config, overrides)
    model = _typed_model(reference_path)
    if model is not None:
        return model.of(apply_overrides(config, overrides, model.reference()), source=str(path))
    reference = read_yaml(reference_path)
    validate_against(apply_overrides(config, overrides, reference), reference, str(path))
    return config


def _typed_model(reference_path: str | os.PathLike):
    """The typed config model of a shipped reference config (LMConfig, RLConfig), else None."""
    from plugins.tidal.Config import LMConfig, RLConfig  # Config imports ConfigError from here

    resolved = Path(reference_path).resolve()
    return {BASE_CONFIG_PATH.resolve(): LMConfig, RL_CONFIG_PATH.resolve(): RLConfig}.get(resolved)


def resolve_project_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the current directory when they exist there, else from the project root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


# ---------------------------------------------------------------------------------------------- process set-up
# glibc returns every allocation above its mmap threshold (at most 32 MB by default) straight to the OS, so a
# training step page-faults its (tokens x 50,257) logit tensors afresh every time: 3-4x slower on the VMs we measured
# (ADR 0012). The thresholds are read once at process start, hence the re-exec.
TUNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def reexec_with_tuned_malloc() -> None:
    """Re-execute this process once with TUNED_MALLOC_ENV set (Linux only; no-op when already set or when
    TIDAL_NO_REEXEC is set). Call it first thing in a CLI's `__main__` block, before heavy imports."""
    if not sys.platform.startswith("linux") or os.environ.get("TIDAL_NO_REEXEC"):
        return
    if all(os.environ.get(k) == v for k, v in TUNED_MALLOC_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **TUNED_MALLOC_ENV})


# ---------------------------------------------------------------------------------------------- logging and CLI
def setup_logger(name: str, log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> logging.Logger:
    """A logger that writes to stderr and, when given, to `log_file` (appending, so a resumed run keeps history)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(level)
        console.setFormatter(fmt)
        logger.addHandler(console)
    if log_file is not None:
        log_file = str(Path(log_file).resolve())
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == log_file for h in logger.handlers):
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_file, encoding="utf-8")
            handler.setLevel(logging.DEBUG)
            handler.setFormatter(fmt)
            logger.addHandler(handler)
    return logger


def cli_main(func: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI `main`: a TidalError (or a missing file) becomes one `error: …` line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs) -> int:
        try:
            return func(*args, **kwargs) or 0
        except TidalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except FileNotFoundError as exc:
            print(f"error: file not found: {exc.filename or exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
