"""The job state machine and the atomic Redis operations on job records, shared by the server and the worker.

Lifecycle (ADR 0007): pending → provisioning → starting → running → completed | failed | cancelled, with
`completing` (graceful finish requested) and `stopping` (stop requested) as transient states. `TRANSITIONS` is the
only definition of what is legal. Each change runs as ONE Lua script that checks the current status, merges the
patch, stores the record in the `tidal:jobs` hash, keeps the active set in step, appends the new record to the jobs
stream (replayable by Last-Event-ID) and PUBLISHes it on `tidal:job:updates` — so concurrent writers (the API, the
worker, the health monitor) can never apply an illegal or lost update.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, get_args

# A job id: one Redis key component and one argv item (`worker_agent.py --job-id`).
JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

JobStatus = Literal["pending", "provisioning", "starting", "running", "completing", "stopping",
                    "completed", "failed", "cancelled"]
STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL = frozenset({"completed", "failed", "cancelled"})
STARTUP = frozenset({"pending", "provisioning", "starting"})
RUNNING = frozenset({"running", "completing", "stopping"})

TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"provisioning", "failed", "cancelled"}),
    "provisioning": frozenset({"starting", "failed", "cancelled"}),
    "starting": frozenset({"running", "failed", "cancelled"}),
    "running": frozenset({"completing", "stopping", "completed", "failed", "cancelled"}),
    "completing": frozenset({"stopping", "completed", "failed", "cancelled"}),
    "stopping": frozenset({"completed", "failed", "cancelled"}),
    "completed": frozenset(),
    "failed": frozenset(),
    "cancelled": frozenset(),
}

SIGNALS = {"complete": "completing", "stop": "stopping"}
STREAM_MAXLEN = 10_000
IDEMPOTENCY_TTL = 24 * 3600
LOG_LIST_MAX = 5000


def sources_of(target: str) -> list[str]:
    """Statuses from which `target` may be entered."""
    return [s for s, targets in TRANSITIONS.items() if target in targets]


_COMMON = """
local function is_terminal(status)
  for s in string.gmatch(ARGV_TERMINAL, '[^,]+') do if s == status then return true end end
  return false
end
"""

# KEYS: jobs hash, active set, jobs stream
# ARGV: jobId, target ('' = patch only), allowed sources CSV, patch JSON, now, channel, maxlen, terminal CSV
TRANSITION_LUA = """
local ARGV_TERMINAL = ARGV[8]
""" + _COMMON + """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'missing', ''} end
local job = cjson.decode(raw)
local target = ARGV[2]
if target ~= '' then
  if job.status == target then return {'same', raw} end
  local ok = false
  for s in string.gmatch(ARGV[3], '[^,]+') do if s == job.status then ok = true end end
  if not ok then return {'illegal', raw} end
  job.status = target
elseif is_terminal(job.status) and ARGV[3] ~= '*' then
  return {'illegal', raw}
end
for k, v in pairs(cjson.decode(ARGV[4])) do job[k] = v end
job.updatedAt = tonumber(ARGV[5])
local out = cjson.encode(job)
redis.call('HSET', KEYS[1], ARGV[1], out)
if is_terminal(job.status) then redis.call('SREM', KEYS[2], ARGV[1]) else redis.call('SADD', KEYS[2], ARGV[1]) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'kind', 'job-update', 'data', out)
redis.call('PUBLISH', ARGV[6], out)
return {'ok', out}
"""

# KEYS: jobs hash, active set, jobs stream, idempotency key
# ARGV: jobId, job JSON, type, concurrency, channel, maxlen, fingerprint ('' = no key), idempotency ttl, terminal CSV
CREATE_LUA = """
local ARGV_TERMINAL = ARGV[9]
""" + _COMMON + """
if ARGV[7] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local e = cjson.decode(existing)
    local raw = redis.call('HGET', KEYS[1], e.jobId)
    if raw then
      if e.fingerprint ~= ARGV[7] then return {'idempotency-mismatch', raw} end
      return {'existing', raw}
    end
  end
end
local count, blocking = 0, ''
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local raw = redis.call('HGET', KEYS[1], id)
  if raw then
    local j = cjson.decode(raw)
    if j.type == ARGV[3] and not is_terminal(j.status) then count = count + 1; blocking = id end
  else
    redis.call('SREM', KEYS[2], id)
  end
end
if count >= tonumber(ARGV[4]) then return {'busy', blocking} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[7] ~= '' then
  redis.call('SET', KEYS[4], cjson.encode({jobId = ARGV[1], fingerprint = ARGV[7]}), 'EX', ARGV[8])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'job-update', 'data', ARGV[2])
redis.call('PUBLISH', ARGV[5], ARGV[2])
return {'created', ARGV[2]}
"""


@dataclass(frozen=True)
class TransitionResult:
    outcome: str            # ok | same | illegal | missing
    job: dict | None

    @property
    def ok(self) -> bool:
        return self.outcome in ("ok", "same")


def transition_call(keys, job_id: str, target: str | None, patch: dict | None, now: float,
                    allow_terminal_patch: bool = False) -> tuple[list, list]:
    """(KEYS, ARGV) for TRANSITION_LUA; `keys` is the manifest's RedisKeys. target None = patch only.
    Entering `running` stamps startedAt and entering a terminal status stamps completedAt (unless given)."""
    patch = dict(patch or {})
    if target == "running":
        patch.setdefault("startedAt", now)
    if target in TERMINAL:
        patch.setdefault("completedAt", now)
    sources = ",".join(sources_of(target)) if target else ("*" if allow_terminal_patch else "")
    return ([keys.jobsHash, keys.jobsActiveSet, keys.jobsStream],
            [job_id, target or "", sources, json.dumps(patch), repr(float(now)), keys.updatesChannel,
             STREAM_MAXLEN, ",".join(sorted(TERMINAL))])


def parse_transition(reply) -> TransitionResult:
    outcome, raw = reply[0], reply[1]
    if isinstance(outcome, bytes):
        outcome, raw = outcome.decode(), raw.decode() if isinstance(raw, bytes) else raw
    return TransitionResult(outcome, json.loads(raw) if raw else None)


def create_call(keys, job: dict, concurrency: int, idempotency_key: str | None, fingerprint: str | None
                ) -> tuple[list, list]:
    idem = keys.idempotencyPrefix + idempotency_key if idempotency_key else keys.idempotencyPrefix + "-"
    return ([keys.jobsHash, keys.jobsActiveSet, keys.jobsStream, idem],
            [job["jobId"], json.dumps(job), job["type"], concurrency, keys.updatesChannel, STREAM_MAXLEN,
             fingerprint if idempotency_key else "", IDEMPOTENCY_TTL, ",".join(sorted(TERMINAL))])


def log_record(stream: str, line: str, ts: float) -> dict:
    return {"timestamp": ts, "stream": stream, "line": line}


def queue_log_append(pipe, keys, job_id: str, records: list[dict]) -> None:
    """Queue on a (sync or async) pipeline: append log records to the capped list and to the jobs stream."""
    pipe.rpush(keys.logs(job_id), *[json.dumps(r) for r in records])
    pipe.ltrim(keys.logs(job_id), -LOG_LIST_MAX, -1)
    pipe.xadd(keys.jobsStream, {"kind": "log-lines", "data": json.dumps({"jobId": job_id, "lines": records})},
              maxlen=STREAM_MAXLEN, approximate=True)
