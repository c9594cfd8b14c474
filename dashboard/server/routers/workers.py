"""The worker API: what a remote `worker_agent.py --api-url` uses instead of Redis. Bearer-authenticated.

Status changes go through the same state machine as everything else (an illegal one is 409, which the worker
reads as "not applied", e.g. when the job was cancelled meanwhile).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends

from ..deps import get_services, require_auth
from ..errors import FieldError
from ..models import (
    ErrorResponse,
    ExperimentIdRequest,
    IngestResponse,
    JobResponse,
    OkResponse,
    SignalPollResponse,
    WorkerLogsRequest,
    WorkerMetricsRequest,
    WorkerStatusUpdate,
)
from ..services.paths import check_experiment_id, check_job_id

router = APIRouter(prefix="/api/workers/{job_id}", tags=["workers"], dependencies=[Depends(require_auth)],
                   responses={400: {"model": ErrorResponse}, 401: {"model": ErrorResponse},
                              404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})

METRICS_STREAM_MAXLEN = 50_000


async def _job(services, job_id: str) -> dict:
    return await services.store.require(check_job_id(job_id))


@router.post("/heartbeat", response_model=OkResponse)
async def heartbeat(job_id: str, services=Depends(get_services)):
    await _job(services, job_id)
    s = services.settings
    await services.store.record_heartbeat(job_id, max(s.heartbeat_timeout, 3 * s.heartbeat_interval))
    return {"ok": True}


@router.patch("/status", response_model=JobResponse)
async def update_status(job_id: str, body: WorkerStatusUpdate, services=Depends(get_services)):
    await _job(services, job_id)
    patch = body.model_dump(exclude={"status"}, exclude_none=True)
    return {"job": await services.store.transition(job_id, body.status, patch, allow_same=True)}


@router.patch("/experiment-id", response_model=JobResponse)
async def set_experiment_id(job_id: str, body: ExperimentIdRequest, services=Depends(get_services)):
    await _job(services, job_id)
    check_experiment_id(body.experimentId)
    return {"job": await services.store.transition(job_id, None, {"experimentId": body.experimentId})}


@router.get("/signal", response_model=SignalPollResponse)
async def poll_signal(job_id: str, services=Depends(get_services)):
    await _job(services, job_id)
    signal = await services.store.pop_signal(job_id)
    return {"signal": signal if signal in ("complete", "stop") else None}


@router.post("/logs", response_model=IngestResponse)
async def ingest_logs(job_id: str, body: WorkerLogsRequest, services=Depends(get_services)):
    await _job(services, job_id)
    await services.store.append_logs(job_id, [line.model_dump() for line in body.lines])
    return {"ok": True, "ingested": len(body.lines)}


@router.post("/metrics", response_model=IngestResponse)
async def ingest_metrics(job_id: str, body: WorkerMetricsRequest, services=Depends(get_services)):
    """Metric records a remote trainer wrote to disk, re-published exactly as MetricsLogger does locally."""
    await _job(services, job_id)
    exp_id = check_experiment_id(body.experimentId)
    keys = services.manifest.redis
    latest = {"metrics": keys.metrics_latest(exp_id), "rl-metrics": keys.rl_latest(exp_id),
              "status": keys.status(exp_id)}
    pipe = services.redis.pipeline(transaction=False)
    pipe.sadd(keys.experimentsSet, exp_id)
    for i, record in enumerate(body.records):
        try:
            data = json.dumps(record.data, allow_nan=False)
        except ValueError:
            raise FieldError(f"body.records.{i}.data", "NaN and Infinity are not allowed") from None
        pipe.xadd(keys.metrics_stream(exp_id), {"kind": record.kind, "data": data},
                  maxlen=METRICS_STREAM_MAXLEN, approximate=True)
        pipe.set(latest[record.kind], data)
    await pipe.execute()
    return {"ok": True, "ingested": len(body.records)}
