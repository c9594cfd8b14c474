"""Path confinement: every path from a request resolves inside the configs directories or the experiments root.

Rules (ADR 0007): no `..` component, no control or shell metacharacters, absolute paths only when they lie inside an
allowed root, and the *resolved* path (symlinks followed) must stay inside it, so a symlink pointing outside is refused
too.
Violations raise `PathRejected` (HTTP 400) naming the field.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path, PurePosixPath

from ..errors import BadRequest, NotFound
from experiment_utils import is_valid_experiment_id

CONFIG_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.ya?ml$")
CHECKPOINT_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\.pth$")
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
SHELL_METACHARACTERS = frozenset(";&|$`<>(){}[]*?!'\"")


class PathRejected(BadRequest):
    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}", detail={"field": field, "reason": reason})


def _inside(path: Path, root: Path) -> bool:
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
    if not any(_inside(resolved, d.resolve()) for d in allowed_dirs):
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
    if not _inside(resolved, root) or resolved == root:
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


def display_path(path: Path, project_root: Path, experiments_root: Path) -> str:
    """How a resolved path is stored in a job record and shown: `experiments/<id>/…`, project-relative, or absolute."""
    root = experiments_root.resolve()
    if _inside(path, root):
        return str(PurePosixPath("experiments", *path.relative_to(root).parts))
    if _inside(path, project_root.resolve()):
        return path.relative_to(project_root.resolve()).as_posix()
    return str(path)


def experiment_dir(experiments_root: Path, exp_id: str, must_exist: bool = False) -> Path:
    """The directory of a valid experiment id (400 for an invalid id, 404 when `must_exist` and it is missing)."""
    check_experiment_id(exp_id)
    path = experiments_root / exp_id
    if must_exist and not path.is_dir():
        raise NotFound(f"experiment not found: {exp_id}")
    return path


def check_experiment_id(exp_id: str) -> str:
    if not is_valid_experiment_id(exp_id):
        raise BadRequest("invalid experiment id", detail={"field": "path.experimentId", "value": exp_id[:200]})
    return exp_id


def check_job_id(job_id: str) -> str:
    if not JOB_ID_RE.match(job_id or ""):
        raise BadRequest("invalid job id", detail={"field": "path.jobId", "value": (job_id or "")[:200]})
    return job_id


def check_config_filename(name: str) -> str:
    if not CONFIG_FILE_RE.match(name or ""):
        raise BadRequest("invalid config file name", detail={"field": "path.file", "value": (name or "")[:200]})
    return name
