"""Server-Sent Events (ADR 0008): live metrics per experiment, and job updates + log lines.

Each event's id is its Redis stream entry id. A client that reconnects with `Last-Event-ID` (header, or the
`lastEventId` query parameter for clients that cannot set headers) gets exactly the entries after that id, then the
live ones. The first event on a connection is a `heartbeat` sent once the subscription is in place, and another one
follows every `sse_ping` seconds. A malformed Last-Event-ID is a 400 (not silently "from the start").
"""
from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from ..deps import get_services
from ..errors import BadRequest
from ..models import ErrorResponse
from ..services.paths import check_experiment_id
from ..services.sse_hub import STREAM_ID_RE, parse_id

router = APIRouter(tags=["stream"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}})

RETRY_MS = 1000
EXPERIMENT_KINDS = {"metrics", "rl-metrics", "status"}
JOB_KINDS = {"job-update", "log-lines"}


def _heartbeat() -> ServerSentEvent:
    return ServerSentEvent(json.dumps({"timestamp": time.time()}), event="heartbeat")


def _last_event_id(header: str | None, query: str | None) -> str | None:
    value = header if header is not None else query
    if value is None or value == "":
        return None
    value = value.strip()
    if not STREAM_ID_RE.match(value):
        raise BadRequest("invalid Last-Event-ID: expected a stream id like 1700000000000-0",
                         detail={"field": "header.Last-Event-ID", "value": value[:100]})
    return value


async def _events(hub, key: str, last_id: str | None, kinds: set[str]):
    sub = await hub.subscribe(key)
    try:
        yield ServerSentEvent(json.dumps({"timestamp": time.time()}), event="heartbeat", retry=RETRY_MS)
        if last_id is not None:
            last = parse_id(last_id)
            async for entry in hub.backlog(key, last_id):
                last = entry.key
                if entry.fields.get("kind") in kinds:
                    yield ServerSentEvent(raw_data(entry), event=entry.fields["kind"], id=entry.id)
        else:
            last = parse_id(sub.start_id)
        while True:
            entry = await sub.get()
            if entry is None:  # fell behind (or shutdown): end the stream; the client resumes by Last-Event-ID
                return
            if entry.key <= last:
                continue
            last = entry.key
            if entry.fields.get("kind") in kinds:
                yield ServerSentEvent(raw_data(entry), event=entry.fields["kind"], id=entry.id)
    finally:
        hub.unsubscribe(sub)


def raw_data(entry) -> str:
    return entry.fields.get("data", "null")


def _response(services, generator) -> EventSourceResponse:
    settings = services.settings
    return EventSourceResponse(generator, ping=settings.sse_ping, ping_message_factory=_heartbeat,
                               send_timeout=settings.sse_send_timeout,
                               headers={"Cache-Control": "no-cache"})


@router.get("/api/experiments/{experiment_id}/stream", summary="SSE: metrics, status, rl-metrics, heartbeat",
            response_class=EventSourceResponse)
async def experiment_stream(experiment_id: str, request: Request, services=Depends(get_services),
                            last_event_id: str | None = Header(None, alias="Last-Event-ID"),
                            lastEventId: str | None = Query(None, max_length=64)):
    check_experiment_id(experiment_id)
    await services.experiments.require(experiment_id)
    last = _last_event_id(last_event_id, lastEventId)
    key = services.manifest.redis.metrics_stream(experiment_id)
    return _response(services, _events(services.hub, key, last, EXPERIMENT_KINDS))


@router.get("/api/jobs/stream", summary="SSE: job-update, log-lines, heartbeat", response_class=EventSourceResponse)
async def jobs_stream(request: Request, services=Depends(get_services),
                      last_event_id: str | None = Header(None, alias="Last-Event-ID"),
                      lastEventId: str | None = Query(None, max_length=64)):
    last = _last_event_id(last_event_id, lastEventId)
    return _response(services, _events(services.hub, services.manifest.redis.jobsStream, last, JOB_KINDS))
