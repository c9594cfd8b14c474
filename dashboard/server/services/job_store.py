"""Job records in Redis for the server (asyncio). The state rules and Lua scripts live in `core.jobs`."""
from __future__ import annotations

import builtins
import json
import time

from core import jobs as jobs_core
from core.jobs import TERMINAL, TransitionResult
from core.manifest import RedisKeys

from ..errors import Conflict, NotFound


class JobStore:
    def __init__(self, redis, keys: RedisKeys):
        self.redis = redis
        self.keys = keys
        self._transition = redis.register_script(jobs_core.TRANSITION_LUA)
        self._create = redis.register_script(jobs_core.CREATE_LUA)

    async def create(self, job: dict, concurrency: int, idempotency_key: str | None = None,
                     fingerprint: str | None = None) -> tuple[str, dict | str]:
        """('created'|'existing'|'idempotency-mismatch', job) or ('busy', blocking job id)."""
        keys, args = jobs_core.create_call(self.keys, job, concurrency, idempotency_key, fingerprint)
        outcome, raw = await self._create(keys=keys, args=args)
        return outcome, (raw if outcome == "busy" else json.loads(raw))

    async def get(self, job_id: str) -> dict | None:
        raw = await self.redis.hget(self.keys.jobsHash, job_id)
        return json.loads(raw) if raw else None

    async def require(self, job_id: str) -> dict:
        job = await self.get(job_id)
        if job is None:
            raise NotFound(f"job not found: {job_id}")
        return job

    async def list(self) -> list[dict]:
        raw = await self.redis.hvals(self.keys.jobsHash)
        jobs = [json.loads(r) for r in raw]
        return sorted(jobs, key=lambda j: j.get("createdAt") or 0, reverse=True)

    # below the `list` method, `list` in an annotation names the method: builtins.list is the type
    async def list_active(self) -> builtins.list[dict]:
        ids = await self.redis.smembers(self.keys.jobsActiveSet)
        if not ids:
            return []
        raws = await self.redis.hmget(self.keys.jobsHash, sorted(ids))
        jobs = [json.loads(r) for r in raws if r]
        return sorted((j for j in jobs if j.get("status") not in TERMINAL),
                      key=lambda j: j.get("createdAt") or 0, reverse=True)

    async def transition(self, job_id: str, target: str | None, patch: dict | None = None, *,
                         allow_same: bool = False) -> dict:
        """Move a job to `target` (None: patch fields only). Unknown job → NotFound; illegal → Conflict (409)."""
        result = await self.try_transition(job_id, target, patch)
        if result.outcome == "missing":
            raise NotFound(f"job not found: {job_id}")
        if result.outcome == "illegal" or (result.outcome == "same" and not allow_same):
            current = result.job.get("status") if result.job else "?"
            what = f"move job from {current} to {target}" if target else f"update a {current} job"
            raise Conflict(f"cannot {what}", detail={"jobId": job_id, "status": current, "requested": target})
        assert result.job is not None  # "ok" and "same" answers carry the job
        return result.job

    async def try_transition(self, job_id: str, target: str | None, patch: dict | None = None
                             ) -> TransitionResult:
        keys, args = jobs_core.transition_call(self.keys, job_id, target, patch, time.time())
        return jobs_core.parse_transition(await self._transition(keys=keys, args=args))

    async def set_signal(self, job_id: str, signal: str, ttl: int = 300) -> None:
        await self.redis.set(self.keys.signal(job_id), signal, ex=ttl)

    async def pop_signal(self, job_id: str) -> str | None:
        return await self.redis.getdel(self.keys.signal(job_id))

    async def record_heartbeat(self, job_id: str, ttl: float) -> float:
        now = time.time()
        await self.redis.set(self.keys.heartbeat(job_id), repr(now), px=max(1000, int(ttl * 1000)))
        return now

    async def last_heartbeat(self, job_id: str) -> float | None:
        raw = await self.redis.get(self.keys.heartbeat(job_id))
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    async def append_logs(self, job_id: str, records: builtins.list[dict]) -> None:
        if not records:
            return
        pipe = self.redis.pipeline(transaction=True)
        jobs_core.queue_log_append(pipe, self.keys, job_id, records)
        await pipe.execute()

    async def get_logs(self, job_id: str, offset: int, limit: int) -> tuple[builtins.list[dict], int]:
        key = self.keys.logs(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.llen(key)
        pipe.lrange(key, offset, offset + limit - 1)
        total, raws = await pipe.execute()
        lines = []
        for raw in raws:
            try:
                lines.append(json.loads(raw))
            except ValueError:
                continue
        return lines, total
