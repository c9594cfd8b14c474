"""Token-bucket rate limiting in Redis that fails open (ADR 0009).

One Lua script per request, timed by Redis's own clock (`TIME`), so several server processes share one bucket per
client without clock skew: capacity 5, one token back every 6 s (README, "Dashboard"). The limiter has its own Redis
client with short socket timeouts and no retries, and a circuit breaker: after a failure it skips Redis for a few
seconds and lets requests through ("fail open"), logging once per outage, so a dead Redis adds at most one short
timeout.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("tidal.dashboard.ratelimit")

# KEYS[1] bucket; ARGV capacity, refill interval (ms), key ttl (ms). Returns {allowed, remaining, retry_after_ms}.
TOKEN_BUCKET_LUA = """
redis.replicate_commands()
local capacity = tonumber(ARGV[1])
local refill_ms = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens, ts = tonumber(state[1]), tonumber(state[2])
if tokens == nil or ts == nil then tokens, ts = capacity, now end
tokens = math.min(capacity, tokens + math.max(0, now - ts) / refill_ms)
local allowed, retry_ms = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  retry_ms = math.ceil((1 - tokens) * refill_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {allowed, math.floor(tokens), retry_ms}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after: int = 0        # whole seconds, >= 1 when refused

    def headers(self) -> dict[str, str]:
        h = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining)}
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after)
        return h


class RateLimiter:
    def __init__(self, redis_url: str, *, prefix: str, capacity: int = 5, refill_seconds: float = 6.0,
                 timeout: float = 0.25, breaker_seconds: float = 5.0):
        self.redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=timeout,
                                    socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
                                    max_connections=64, health_check_interval=0)
        self.script = self.redis.register_script(TOKEN_BUCKET_LUA)
        self.prefix = prefix
        self.capacity = capacity
        self.refill_ms = int(refill_seconds * 1000)
        self.ttl_ms = int(self.refill_ms * capacity * 2)
        self.timeout = timeout
        self.breaker_seconds = breaker_seconds
        self.open_until = 0.0
        self.outage_started: float | None = None

    async def check(self, client: str) -> Decision:
        if time.monotonic() < self.open_until:
            return self._open()
        try:
            # the socket timeouts bound each step; this bounds the whole call (connect + write + read)
            allowed, remaining, retry_ms = await asyncio.wait_for(
                self.script(keys=[self.prefix + client], args=[self.capacity, self.refill_ms, self.ttl_ms]),
                timeout=self.timeout)
        except (TimeoutError, RedisError, OSError) as exc:
            self.open_until = time.monotonic() + self.breaker_seconds
            if self.outage_started is None:
                self.outage_started = time.time()
                log.warning("rate limiter: Redis unavailable (%s); failing open, retrying in %.0f s",
                            exc.__class__.__name__, self.breaker_seconds)
            return self._open()
        if self.outage_started is not None:
            log.warning("rate limiter: Redis is back after %.0f s", time.time() - self.outage_started)
            self.outage_started = None
        return Decision(bool(allowed), self.capacity, int(remaining),
                        retry_after=max(1, math.ceil(int(retry_ms) / 1000)) if not allowed else 0)

    def _open(self) -> Decision:
        return Decision(True, self.capacity, self.capacity)  # Redis unavailable: let through without counting

    async def close(self) -> None:
        await self.redis.aclose()
