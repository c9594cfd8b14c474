"""Where things are, and which paths a request or a job may name.

`PROJECT_ROOT` is the repository root. An experiment id names a directory and appears in Redis keys and URLs, so
`is_valid_experiment_id` is the one check every consumer (training entry points, the worker, the dashboard's path
confinement) applies to it.

Path confinement (ADR 0007), applied by the dashboard to every request and by the worker to every job: no `..`
component, no control or shell metacharacters, absolute paths only when they lie inside an allowed root, and the
*resolved* path (symlinks followed) must stay inside it, so a symlink pointing outside is refused too. Violations
raise `PathRejected` naming the field (the dashboard answers it with HTTP 400).
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

from core.errors import TidalError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Letters, digits, "_", "-" and "."; at most 128 characters; starting with a letter or digit (so never ".", "..",
# a hidden file, or something a command line reads as an option). No separator: an id is one path component.
_EXPERIMENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
SHELL_METACHARACTERS = frozenset(";&|$`<>(){}[]*?!'\"")


def is_valid_experiment_id(value: object) -> bool:
    # ".." never appears in a generated id; refusing it anywhere keeps ids far from path-traversal look-alikes.
    return isinstance(value, str) and _EXPERIMENT_ID_RE.fullmatch(value) is not None and ".." not in value


class PathRejected(TidalError):
    """A path that confinement refuses; the message is `<field>: <reason>`."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def is_inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _basic_checks(field: str, raw: str) -> PurePosixPath:
    if not isinstance(raw, str) or not raw.strip():
        raise PathRejected(field, "must be a non-empty path")
    if "\x00" in raw or len(raw) > 1024:
        raise PathRejected(field, "is not a valid path")
    # Trainers get paths as argv items (never through a shell), but a path a shell or a log line could misread has
    # no business in a job: refused even when such a file exists inside an allowed directory.
    bad = sorted({c for c in raw if c in SHELL_METACHARACTERS or unicodedata.category(c) == "Cc"})
    if bad:
        raise PathRejected(field, f"must not contain shell metacharacters or control characters: {''.join(bad)!r}")
    pure = PurePosixPath(raw.replace("\\", "/"))
    if ".." in pure.parts:
        raise PathRejected(field, "must not contain '..'")
    return pure


def resolve_config_path(field: str, raw: str, *, plugin_dir: Path, project_root: Path,
                        allowed_dirs: tuple[Path, ...]) -> Path:
    """A config YAML: `configs/x.yaml` (plugin-relative), `plugins/tidal/configs/x.yaml` (project-relative) or an
    absolute path, which must resolve inside one of `allowed_dirs` and exist."""
    pure = _basic_checks(field, raw)
    if pure.is_absolute():
        candidate = Path(pure)
    elif pure.parts[0] == "plugins":
        candidate = project_root / pure
    else:
        candidate = plugin_dir / pure
    resolved = candidate.resolve()
    if not any(is_inside(resolved, d.resolve()) for d in allowed_dirs):
        raise PathRejected(field, "must be inside the plugin's configs directory")
    if resolved.suffix not in (".yaml", ".yml"):
        raise PathRejected(field, "must be a .yaml file")
    if not resolved.is_file():
        raise PathRejected(field, f"config file not found: {raw}")
    return resolved


def resolve_experiment_path(field: str, raw: str, *, experiments_root: Path, kind: str) -> Path:
    """A path under the experiments root: `experiments/<id>/…`, `<id>/…` or absolute inside the root.
    kind "checkpoint": an existing `.pth` file; kind "dir": an existing experiment directory."""
    pure = _basic_checks(field, raw)
    root = experiments_root.resolve()
    if pure.is_absolute():
        candidate = Path(pure)
    elif pure.parts[0] == "experiments" and len(pure.parts) > 1:
        candidate = root.joinpath(*pure.parts[1:])
    else:
        candidate = root / pure
    resolved = candidate.resolve()
    if not is_inside(resolved, root) or resolved == root:
        raise PathRejected(field, "must be inside the experiments directory")
    exp_id = resolved.relative_to(root).parts[0]
    if not is_valid_experiment_id(exp_id):
        raise PathRejected(field, f"{exp_id!r} is not a valid experiment id")
    if kind == "checkpoint":
        if resolved.suffix != ".pth":
            raise PathRejected(field, "must be a .pth checkpoint")
        if not resolved.is_file():
            raise PathRejected(field, f"checkpoint not found: {raw}")
    elif kind == "dir":
        if len(resolved.relative_to(root).parts) != 1:
            raise PathRejected(field, "must be an experiment directory (experiments/<id>)")
        if not resolved.is_dir():
            raise PathRejected(field, f"experiment directory not found: {raw}")
    return resolved
