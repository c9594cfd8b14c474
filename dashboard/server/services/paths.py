"""Request paths and ids for the API: how a resolved path is shown, and the path-parameter checks (HTTP 400/404).

Path confinement itself (`resolve_config_path`, `resolve_experiment_path`, `PathRejected`) is in `core.paths`, shared
with the worker agent; the error handlers answer a `PathRejected` with HTTP 400 naming the field.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from core.jobs import JOB_ID_RE
from core.paths import is_inside, is_valid_experiment_id

from ..errors import BadRequest, NotFound

CONFIG_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.ya?ml$")


def display_path(path: Path, project_root: Path, experiments_root: Path) -> str:
    """How a resolved path is stored in a job record and shown: `experiments/<id>/…`, project-relative, or absolute."""
    root = experiments_root.resolve()
    if is_inside(path, root):
        return str(PurePosixPath("experiments", *path.relative_to(root).parts))
    if is_inside(path, project_root.resolve()):
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
