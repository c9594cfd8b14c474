"""The job health monitor: fails jobs whose worker is gone (SPEC §9, ADR 0007).

Every `monitor_interval` seconds, for each active job:
- start-up states (pending/provisioning/starting): failed when the local worker process has exited, or when the
  state is older than the provider's start-up timeout;
- running/completing/stopping: when the last heartbeat (or the start, if none yet) is older than
  `heartbeat_timeout` → failed "worker heartbeat lost" (a `stopping` job → cancelled: the user asked for the stop).
If Redis itself was unreachable, nobody could heartbeat: time spent in the outage never counts, i.e. every deadline
is measured from no earlier than the moment Redis came back.
"""
from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from .job_store import JobStore
from .jobs_core import RUNNING, STARTUP

log = logging.getLogger("tidal.dashboard.health")


class HealthMonitor:
    def __init__(self, store: JobStore, providers: dict, settings):
        self.store = store
        self.providers = providers
        self.settings = settings
        self.redis_down_since: float | None = None
        self.not_before = 0.0            # deadlines are measured from no earlier than this (end of a Redis outage)
        self.checks = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tidal-health-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must outlive any single bad record
                log.exception("health check failed")
            await asyncio.sleep(self.settings.monitor_interval)

    async def check_once(self, now: float | None = None) -> list[str]:
        """One pass; returns the ids of the jobs it ended."""
        now = time.time() if now is None else now
        try:
            jobs = await self.store.list_active()
        except (RedisError, OSError) as exc:
            if self.redis_down_since is None:
                self.redis_down_since = now
                log.warning("health monitor: Redis unreachable (%s); no job is failed while it is down", exc)
            return []
        if self.redis_down_since is not None:
            log.warning("health monitor: Redis is back after %.0f s", now - self.redis_down_since)
            self.redis_down_since = None
            self.not_before = now
        self.checks += 1
        ended = []
        for job in jobs:
            try:
                if await self._check_job(job, now):
                    ended.append(job["jobId"])
            except (RedisError, OSError):
                self.redis_down_since = now
                return ended
        return ended

    async def _check_job(self, job: dict, now: float) -> bool:
        provider = self.providers.get(job.get("provider"))
        status = job["status"]
        if status in STARTUP:
            since = max(job.get("updatedAt") or now, self.not_before)
            alive = provider.is_alive(job) if provider is not None and status == "starting" else None
            if alive is False:
                # give the worker's own final report a moment to land before declaring it dead
                await asyncio.sleep(0.2)
                fresh = await self.store.get(job["jobId"])
                if fresh is None or fresh["status"] != status:
                    return False
                return await self._end(job, provider, "failed", "worker exited during start-up")
            timeout = provider.startup_timeout if provider is not None else self.settings.startup_timeout
            if now - since > timeout:
                return await self._end(job, provider, "failed", f"stuck in {status} for {now - since:.0f} s")
        elif status in RUNNING:
            beat = await self.store.last_heartbeat(job["jobId"])
            last = max(beat or 0.0, job.get("startedAt") or job.get("updatedAt") or now, self.not_before)
            if now - last > self.settings.heartbeat_timeout:
                target = "cancelled" if status == "stopping" else "failed"
                return await self._end(job, provider, target, "worker heartbeat lost")
        return False

    async def _end(self, job: dict, provider, target: str, reason: str) -> bool:
        result = await self.store.try_transition(job["jobId"], target, {"error": reason})
        if result.outcome != "ok":
            return False
        log.warning("job %s %s: %s", job["jobId"], target, reason)
        if provider is not None:
            try:
                provider.release(job)
            except Exception:
                log.exception("releasing the worker of job %s failed", job["jobId"])
        return True
