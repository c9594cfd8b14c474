"""Experiments: list, metrics (downsampled), status, RL metrics, checkpoints, evaluation and ablation results."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from ..deps import get_services, require_auth
from ..errors import FieldError
from ..models import (
    CheckpointsResponse,
    ConfigDiffResponse,
    ConfigFilesResponse,
    ErrorResponse,
    ExperimentInfoRequest,
    ExperimentResponse,
    ExperimentsResponse,
    MetricsResponse,
    ResultsResponse,
    RLMetricsResponse,
    RunsTableResponse,
    StatusResponse,
)
from ..services.paths import check_experiment_id

router = APIRouter(prefix="/api/experiments", tags=["experiments"],
                   responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})


@router.get("", response_model=ExperimentsResponse)
async def list_experiments(services=Depends(get_services)):
    return {"experiments": await services.experiments.list()}


@router.get("/table", response_model=RunsTableResponse,
            summary="Every run with its effective hyperparameters (config with overrides) and final metrics")
async def runs_table(services=Depends(get_services)):
    return await services.experiments.table()


@router.patch("/{experiment_id}", response_model=ExperimentResponse, dependencies=[Depends(require_auth)],
              summary="Set a run's name, tags and notes (kept in its metadata.json)",
              responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}})
async def annotate(experiment_id: str, body: ExperimentInfoRequest, services=Depends(get_services)):
    changes = body.model_dump(exclude_unset=True)
    return {"experiment": await services.experiments.annotate(check_experiment_id(experiment_id), changes)}


@router.get("/{experiment_id}/config-diff", response_model=ConfigDiffResponse,
            summary="The effective config keys that differ between this run and `other`")
async def config_diff(experiment_id: str, other: str = Query(..., max_length=128, description="the other run's id"),
                      services=Depends(get_services)):
    return await services.experiments.config_diff(experiment_id, check_experiment_id(other))


@router.get("/{experiment_id}/metrics", response_model=MetricsResponse,
            summary="Metric history; each series bounded to maxPoints (min/max per bucket, last point kept)")
async def metrics(experiment_id: str, services=Depends(get_services),
                  mode: Literal["recent", "historical"] = "historical",
                  series: Literal["lm", "rl", "system"] = Query(
                      "lm", description="the LM history, the RL one, or the run's system samples (CPU, memory, GPU)"),
                  window: int = Query(1000, ge=1, le=1_000_000),
                  maxPoints: int = Query(1000, ge=10, le=20_000),
                  keys: str | None = Query(None, max_length=2000,
                                           description="comma-separated metric names (default: all)")):
    key_list = [k.strip() for k in keys.split(",") if k.strip()] if keys else None
    if key_list is not None and (not key_list or len(key_list) > 64):
        raise FieldError("query.keys", "give 1 to 64 metric names")
    body = await services.experiments.metrics(experiment_id, mode, window, maxPoints, key_list, series)
    return Response(body, media_type="application/json")


@router.get("/{experiment_id}/status", response_model=StatusResponse)
async def status(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "status": await services.experiments.status(experiment_id)}


@router.get("/{experiment_id}/rl-metrics", response_model=RLMetricsResponse)
async def rl_metrics(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "metrics": await services.experiments.rl_metrics(experiment_id)}


@router.get("/{experiment_id}/checkpoints", response_model=CheckpointsResponse)
async def checkpoints(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "checkpoints": await services.experiments.checkpoints(experiment_id)}


@router.get("/{experiment_id}/evaluation", response_model=ResultsResponse)
async def evaluation(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "results": await services.experiments.evaluation(experiment_id)}


@router.get("/{experiment_id}/ablation", response_model=ResultsResponse)
async def ablation(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "results": await services.experiments.ablation(experiment_id)}


@router.get("/{experiment_id}/config", response_model=ConfigFilesResponse,
            summary="The YAML configs saved with the run")
async def config(experiment_id: str, services=Depends(get_services)):
    return {"experimentId": experiment_id, "files": await services.experiments.config_files(experiment_id)}
