"""Jobs: list/read (open), create/signal/cancel (bearer token). Creation honours `Idempotency-Key`."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Response

from ..deps import get_services, require_auth
from ..models import CreateJobRequest, ErrorResponse, JobLogsResponse, JobResponse, JobsResponse, SignalRequest
from ..services.paths import check_job_id

router = APIRouter(prefix="/api/jobs", tags=["jobs"],
                   responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})
AUTH: dict[int | str, dict[str, Any]] = {401: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                                         422: {"model": ErrorResponse}}


@router.get("", response_model=JobsResponse)
async def list_jobs(services=Depends(get_services)):
    # records are stored already validated; encode them directly (the list is polled and can be long)
    return Response(json.dumps({"jobs": await services.store.list()}).encode(), media_type="application/json")


@router.get("/active", response_model=JobsResponse)
async def active_jobs(services=Depends(get_services)):
    return {"jobs": await services.store.list_active()}


@router.post("", response_model=JobResponse, status_code=201, dependencies=[Depends(require_auth)], responses={
    **AUTH, 200: {"model": JobResponse, "description": "An earlier request with the same Idempotency-Key"}})
async def create_job(body: CreateJobRequest, response: Response, services=Depends(get_services),
                     idempotency_key: str | None = Header(None, alias="Idempotency-Key")):
    job, created = await services.orchestrator.create(body.model_dump(), idempotency_key)
    response.status_code = 201 if created else 200
    return {"job": job}


@router.get("/{job_id}", response_model=JobResponse)
async def get_job(job_id: str, services=Depends(get_services)):
    return {"job": await services.store.require(check_job_id(job_id))}


@router.get("/{job_id}/logs", response_model=JobLogsResponse)
async def job_logs(job_id: str, services=Depends(get_services), offset: int = Query(0, ge=0, le=10**9),
                   limit: int = Query(500, ge=1, le=5000)):
    await services.store.require(check_job_id(job_id))
    lines, total = await services.store.get_logs(job_id, offset, limit)
    return {"jobId": job_id, "lines": lines, "totalLines": total, "offset": offset}


@router.post("/{job_id}/signal", response_model=JobResponse, dependencies=[Depends(require_auth)], responses=AUTH)
async def signal_job(job_id: str, body: SignalRequest, services=Depends(get_services)):
    return {"job": await services.orchestrator.signal(check_job_id(job_id), body.signal)}


@router.post("/{job_id}/cancel", response_model=JobResponse, dependencies=[Depends(require_auth)], responses=AUTH)
async def cancel_job(job_id: str, services=Depends(get_services)):
    return {"job": await services.orchestrator.cancel(check_job_id(job_id))}
