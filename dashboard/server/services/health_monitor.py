"""The job health monitor: fails jobs whose worker is gone (ADR 0007).

Every `monitor_interval` seconds, for each active job:
- start-up states (pending/provisioning/starting): failed when the local worker process has exited, or when the
  state is older than the provider's start-up timeout;
- running/completing/stopping: when the last heartbeat (or the start, if none yet) is older than
  `heartbeat_timeout` → failed "worker heartbeat lost" (a `stopping` job → cancelled: the user asked for the stop).
- a scheduler provider (Ray) is asked in every active state, from a thread of the monitor's own (a slow cluster
  cannot stall the server): a job whose scheduler job ended before the job reported its end → failed (cancelled
  when stopping) with the scheduler's reason, without waiting for the heartbeat timeout.
If Redis itself was unreachable, nobody could heartbeat: time spent in the outage never counts, i.e. every deadline
is measured from no earlier than the moment Redis came back.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from redis.exceptions import RedisError

from core.jobs import RUNNING, STARTUP

from .job_store import JobStore

log = logging.getLogger("tidal.dashboard.health")

STATUS_TIMEOUT = 10.0   # seconds one scheduler status call may take before the answer counts as "cannot tell"


class HealthMonitor:
    def __init__(self, store: JobStore, providers: dict, settings):
        self.store = store
        self.providers = providers
        self.settings = settings
        self.redis_down_since: float | None = None
        self.not_before = 0.0            # deadlines are measured from no earlier than this (end of a Redis outage)
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None   # scheduler status calls; made on first use

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
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the monitor must outlive any single bad record
                log.exception("health check failed")
            # redis-py may turn a cancellation that lands inside a command into a connection error, which
            # check_once reports as "Redis down": the task still knows it was cancelled, so end here
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError
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
        scheduler = provider is not None and provider.scheduler
        if status in STARTUP:
            since = max(job.get("updatedAt") or now, self.not_before)
            alive = await self._is_alive(provider, job) if status == "starting" or scheduler else None
            if alive is False and provider is not None:
                reason = provider.end_reason(job) or "worker exited during start-up"
                if not await self._unchanged(job):
                    return False
                return await self._end(job, provider, "failed", reason)
            timeout = provider.startup_timeout if provider is not None else self.settings.startup_timeout
            if now - since > timeout:
                return await self._end(job, provider, "failed", f"stuck in {status} for {now - since:.0f} s")
        elif status in RUNNING:
            target = "cancelled" if status == "stopping" else "failed"
            if provider is not None and scheduler and await self._is_alive(provider, job) is False:
                reason = provider.end_reason(job) or "worker exited"
                if await self._unchanged(job):
                    return await self._end(job, provider, target, reason)
                return False
            beat = await self.store.last_heartbeat(job["jobId"])
            last = max(beat or 0.0, job.get("startedAt") or job.get("updatedAt") or now, self.not_before)
            if now - last > self.settings.heartbeat_timeout:
                return await self._end(job, provider, target, "worker heartbeat lost")
        return False

    async def _is_alive(self, provider, job: dict) -> bool | None:
        if provider is None:
            return None
        if not provider.scheduler:
            return provider.is_alive(job)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tidal-health")
        future = asyncio.get_running_loop().run_in_executor(self._executor, provider.is_alive, job)
        try:
            return await asyncio.wait_for(future, STATUS_TIMEOUT)
        except TimeoutError:
            log.warning("%s status of job %s took over %.0f s; treated as unknown", provider.name, job["jobId"],
                        STATUS_TIMEOUT)
            return None

    async def _unchanged(self, job: dict) -> bool:
        """Whether the job is still in the state it was checked in, after giving the worker's own final report a
        moment to land (a worker reports its end, then exits)."""
        await asyncio.sleep(0.2)
        fresh = await self.store.get(job["jobId"])
        return fresh is not None and fresh["status"] == job["status"]

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
