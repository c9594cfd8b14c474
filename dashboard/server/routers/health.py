"""GET /api/health: liveness plus what is degraded. Redis down is `degraded`, never an error: Redis is optional
(ADR 0006) and the server stays alive without it."""
from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from redis.exceptions import RedisError

from ..deps import get_services
from ..models import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=HealthResponse)
async def health(services=Depends(get_services)):
    try:
        redis_ok = bool(await services.redis.ping())
    except (RedisError, OSError):
        redis_ok = False
    limiter_ok = time.monotonic() >= services.limiter.open_until
    return HealthResponse(status="ok" if redis_ok else "degraded", redis="ok" if redis_ok else "unavailable",
                          version=services.version, uptimeSeconds=time.time() - services.started_at,
                          plugins=services.registry.names(), sseReaders=services.hub.reader_count(),
                          rateLimiter="ok" if limiter_ok else "degraded")
