"""Shared plumbing for the Tidal plugin: paths, configuration, atomic writes, logging, CLI error handling.

Every entry point loads its configuration through `load_config`, so a config with a missing key, a value of the
wrong type or a bad `--set` override fails the same way everywhere: one line naming the file and the key.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import json
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

PLUGIN_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PLUGIN_DIR.parent.parent
CONFIG_DIR = PLUGIN_DIR / "configs"
BASE_CONFIG_PATH = CONFIG_DIR / "base_config.yaml"
RL_CONFIG_PATH = CONFIG_DIR / "rl_config.yaml"


class TidalError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits non-zero, without a traceback."""


class ConfigError(TidalError, ValueError):
    pass


def describe_exception(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` (just `Type` when there is none: torch raises a bare EOFError for an empty
    file), for one-line errors built from library exceptions."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines and lines[0] else type(exc).__name__


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as `1e-6` (PyYAML's 1.1 rules make them strings)."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^(?:[-+]?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?\d+[eE][-+]?\d+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_YamlLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of KEY: value at the top level")
    return data


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
                reference_path: str | os.PathLike | None = BASE_CONFIG_PATH) -> dict:
    """Read a YAML config, apply `--set` overrides and check it against the shipped reference config's keys/types."""
    config = read_yaml(path)
    if reference_path is None:
        return apply_overrides(config, overrides)
    reference = read_yaml(reference_path)
    validate_against(apply_overrides(config, overrides, reference), reference, str(path))
    return config


def resolve_project_path(path: str | os.PathLike) -> Path:
    """Relative paths are taken from the current directory when they exist there, else from the project root."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


# ---------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path` (never a torn file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _json_default(obj: Any):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


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
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) for h in logger.handlers):
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
