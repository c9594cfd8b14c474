"""Text generation and trajectory analysis: open, but rate limited per client (the limiter runs first)."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from ..deps import get_services, rate_limit
from ..models import AnalyzeRequest, AnalyzeResponse, ErrorResponse, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/api", tags=["generation"], dependencies=[Depends(rate_limit)],
                   responses={400: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
                              429: {"model": ErrorResponse,
                                    "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                              503: {"model": ErrorResponse}})


@router.post("/generate", response_model=GenerateResponse, response_model_exclude_none=True)
async def generate(body: GenerateRequest, services=Depends(get_services)):
    return await services.generation.generate(body)


@router.post("/analyze-trajectories", response_model=AnalyzeResponse, response_model_exclude_none=True)
async def analyze(body: AnalyzeRequest, services=Depends(get_services)):
    return await services.generation.analyze(body)
