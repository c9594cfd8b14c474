"""`create_app(settings)`: the FastAPI application.

The manifest is parsed and validated here (a bad manifest stops start-up with one clear line). The lifespan starts
and stops everything with a life of its own: the embedded Redis (when REDIS_URL is unset), the Redis clients, the
SSE hub's readers, the health monitor, the rate limiter and the generation service.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .deps import RATE_LIMIT_STATE
from .errors import error_body, install_error_handlers
from .routers import experiments, generate, health, jobs, plugins, stream, workers
from .services.experiments import ExperimentService
from .services.generation import GenerationService
from .services.health_monitor import HealthMonitor
from .services.job_store import JobStore
from .services.orchestrator import Orchestrator
from .services.plugin_registry import PluginRegistry
from .services.providers import make_providers
from .services.rate_limiter import RateLimiter
from .services.sse_hub import StreamHub
from .settings import Settings

log = logging.getLogger("tidal.dashboard")
VERSION = "1.0.0"


class RedisServer(Protocol):
    """The Redis the dashboard started (redis_launcher.EmbeddedRedis) or adopted (_AdoptedRedis)."""

    @property
    def url(self) -> str: ...

    def stop(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    registry: PluginRegistry
    redis: Redis
    redis_blocking: Redis
    store: JobStore
    orchestrator: Orchestrator
    providers: dict
    monitor: HealthMonitor
    hub: StreamHub
    limiter: RateLimiter
    experiments: ExperimentService
    generation: GenerationService
    redis_url: str
    embedded_redis: RedisServer | None
    started_at: float
    version: str = VERSION

    @property
    def manifest(self):
        return self.registry.default


def _start_embedded_redis(settings: Settings) -> RedisServer:
    """A private redis-server kept under <experiments>/.redis with persistence, on the same port as last time when
    that port is free, so a dashboard restart finds its jobs and running workers reconnect."""
    from core.net import free_port
    from redis_launcher import EmbeddedRedis

    data_dir = settings.experiments_dir / ".redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port_file = data_dir / "port"
    port = None
    try:
        port = int(port_file.read_text().strip())
        adopted = _adopt_embedded_redis(port, data_dir)
        if adopted is not None:
            return adopted
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
    except (OSError, ValueError):
        port = free_port()
    server = EmbeddedRedis(port=port, data_dir=data_dir, persist=True).start()
    port_file.write_text(str(server.port))
    log.info("embedded Redis at %s (data in %s)", server.url, data_dir)
    return server


class _AdoptedRedis:
    """The embedded Redis of a dashboard that died without stopping it (SIGKILL): its workers still write there."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def stop(self) -> None:
        import redis

        try:
            redis.Redis(port=self.port, socket_timeout=5).shutdown()
        except (redis.RedisError, OSError):
            pass


def _adopt_embedded_redis(port: int, data_dir: Path) -> _AdoptedRedis | None:
    import redis

    try:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1) as client:
            running_dir = client.config_get("dir").get("dir")
    except (redis.RedisError, OSError):
        return None
    if running_dir is None or Path(running_dir).resolve() != data_dir.resolve():
        return None
    log.warning("reattached to the embedded Redis left running at port %d (%s)", port, data_dir)
    return _AdoptedRedis(port)


async def start_services(settings: Settings, registry: PluginRegistry) -> Services:
    embedded: RedisServer | None = None
    redis_url = settings.redis_url
    if redis_url is None:
        embedded = _start_embedded_redis(settings)
        redis_url = embedded.url
    redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
                           retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1), max_connections=256)
    # blocking XREADs need a socket timeout above their block time
    redis_blocking = Redis.from_url(redis_url, decode_responses=True, socket_timeout=15, socket_connect_timeout=2,
                                    retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))
    manifest = registry.default
    store = JobStore(redis, manifest.redis)
    providers = make_providers(settings)
    monitor = HealthMonitor(store, providers, settings)
    services = Services(
        settings=settings, registry=registry, redis=redis, redis_blocking=redis_blocking, store=store,
        orchestrator=Orchestrator(settings, registry, store, providers, redis_url), providers=providers,
        monitor=monitor, hub=StreamHub(redis_blocking, queue_size=settings.sse_queue_size),
        limiter=RateLimiter(redis_url, prefix=manifest.redis.rateLimitPrefix, capacity=settings.rate_capacity,
                            refill_seconds=settings.rate_refill_seconds, timeout=settings.rate_timeout,
                            breaker_seconds=settings.rate_breaker_seconds),
        experiments=ExperimentService(settings, manifest, redis), generation=GenerationService(settings, registry),
        redis_url=redis_url, embedded_redis=embedded, started_at=time.time())
    monitor.start()
    # runs started from the command line (REDIS_URL unset) find this Redis here and chart live with no set-up
    from core.net import announce_redis_url

    try:
        announce_redis_url(settings.experiments_dir, redis_url)
    except OSError as exc:  # a read-only experiments directory costs CLI runs their live view, nothing else
        log.warning("could not announce the Redis URL in %s (%s); CLI runs need REDIS_URL to chart live",
                    settings.experiments_dir, exc)
    return services


async def stop_services(services: Services) -> None:
    from core.net import withdraw_redis_url

    withdraw_redis_url(services.settings.experiments_dir, services.redis_url)
    await services.monitor.stop()
    for provider in services.providers.values():  # workers keep running (a restart loses no job); reap the dead
        reap = getattr(provider, "reap", None)
        if reap is not None:
            reap()
    await services.hub.close()
    await services.generation.close()
    await services.limiter.close()
    await services.redis_blocking.aclose()
    await services.redis.aclose()
    if services.embedded_redis is not None:
        services.embedded_redis.stop()


class BodyLimitMiddleware:
    """413 for a request body over the limit: by Content-Length up front, and by counting the bytes actually
    received (a chunked or lying client cannot get past it). Bodies are small JSON, so they are read here."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                return await self._reject(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._reject(send)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send):
        import json

        body = json.dumps(error_body("request body too large", {"limitBytes": self.limit})).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class RateLimitHeadersMiddleware:
    """Adds X-RateLimit-* (and Retry-After) to every answer of a rate-limited route, errors included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                decision = (scope.get("state") or {}).get(RATE_LIMIT_STATE)
                if decision is not None:
                    extra = [(k.lower().encode(), v.encode()) for k, v in decision.headers().items()]
                    names = {k for k, _ in extra}
                    message = {**message, "headers": [h for h in message.get("headers", []) if h[0] not in names]
                               + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings | None = None, registry: PluginRegistry | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    registry = registry or PluginRegistry.load(settings.manifest_path)  # ManifestError: file + field

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = await start_services(settings, registry)
        try:
            yield
        finally:
            await stop_services(app.state.services)

    app = FastAPI(title="Tidal dashboard API", version=VERSION, lifespan=lifespan,
                  description="Experiments, metrics, jobs, live streams and generation for the Tidal plugin.")
    app.state.settings = settings
    install_error_handlers(app)
    for module in (health, plugins, stream, experiments, jobs, generate, workers):
        app.include_router(module.router)
    client_dir = Path(settings.client_dir)
    uplot = client_dir / "node_modules" / "uplot" / "dist"
    if uplot.is_dir():  # installed by `make setup` (npm ci); the page says so when it is missing
        app.mount("/vendor/uplot", StaticFiles(directory=uplot), name="uplot")
    else:
        log.warning("uPlot is not installed (%s): run `make setup` for the web client's charts", uplot)
    if client_dir.is_dir():
        app.mount("/", StaticFiles(directory=client_dir, html=True), name="client")
    app.add_middleware(RateLimitHeadersMiddleware)
    app.add_middleware(BodyLimitMiddleware, limit=settings.body_limit)
    return app
