"""The cluster job store: one Redis (``redis://host:port/db``), shared by every ingress replica on every node.

A job is a hash ``{prefix}job:<id>`` (the record's fields, JSON where structured, the input image as bytes) with
its events in the list ``{prefix}job:<id>:events``; sorted sets index the queue (by creation time), the running
jobs (by lease end) and the jobs to expire (by retention end); ``{prefix}idem:<key>`` maps an idempotency key to
its job. Every change that touches more than one key is one Lua script, which Redis runs atomically.
"""

from __future__ import annotations

import json

import redis.asyncio as redis

from serve_app.jobs.records import (
    IdempotencyKeyReusedError,
    JobEvent,
    JobRecord,
    JobStatus,
    NewJob,
    QueueFullError,
    check_outcome,
    new_job_id,
)

SUBMIT = """
local prefix, job_id, key, fingerprint = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if key ~= '' then
  local existing = redis.call('GET', prefix .. 'idem:' .. key)
  if existing then
    if redis.call('HGET', prefix .. 'job:' .. existing, 'fingerprint') ~= fingerprint then
      return {'reused', existing}
    end
    return {'existing', existing}
  end
end
if redis.call('ZCARD', prefix .. 'queue') >= tonumber(ARGV[5]) then
  return {'full', ''}
end
redis.call('HSET', prefix .. 'job:' .. job_id, 'id', job_id, 'status', 'queued', 'request', ARGV[6],
  'fingerprint', fingerprint, 'idempotency_key', key, 'webhook', ARGV[7], 'created_at', ARGV[8], 'attempts', 0,
  'cancel_requested', 0, 'image', ARGV[9])
redis.call('ZADD', prefix .. 'queue', ARGV[8], job_id)
if key ~= '' then
  redis.call('SET', prefix .. 'idem:' .. key, job_id)
end
return {'created', job_id}
"""

CLAIM = """
local prefix, owner, now, lease_until = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
-- the oldest by creation of the queued jobs and the running ones whose lease ran out
local job_id, created_at = nil, nil
for _, candidate in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'running', '-inf', '(' .. now)) do
  local created = tonumber(redis.call('HGET', prefix .. 'job:' .. candidate, 'created_at'))
  if not job_id or created < created_at then
    job_id, created_at = candidate, created
  end
end
local head = redis.call('ZRANGE', prefix .. 'queue', 0, 0, 'WITHSCORES')
if head[1] and (not job_id or tonumber(head[2]) < created_at) then
  job_id = head[1]
end
if not job_id then
  return false
end
local job = prefix .. 'job:' .. job_id
redis.call('ZREM', prefix .. 'queue', job_id)
redis.call('ZADD', prefix .. 'running', lease_until, job_id)
redis.call('HSET', job, 'status', 'running', 'owner', owner, 'lease_until', lease_until)
redis.call('HSETNX', job, 'started_at', ARGV[3])
redis.call('HINCRBY', job, 'attempts', 1)
return job_id
"""

RENEW = """
local prefix, job_id, owner, lease_until = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local job = prefix .. 'job:' .. job_id
if redis.call('HGET', job, 'status') ~= 'running' or redis.call('HGET', job, 'owner') ~= owner then
  return 0
end
redis.call('HSET', job, 'lease_until', lease_until)
redis.call('ZADD', prefix .. 'running', lease_until, job_id)
return 1
"""

FINISH = """
local prefix, job_id, owner = ARGV[1], ARGV[2], ARGV[3]
local job = prefix .. 'job:' .. job_id
if redis.call('HGET', job, 'status') ~= 'running' or redis.call('HGET', job, 'owner') ~= owner then
  return 0
end
redis.call('HSET', job, 'status', ARGV[4], 'finished_at', ARGV[5], 'expires_at', ARGV[6], 'result', ARGV[7],
  'error', ARGV[8])
redis.call('HDEL', job, 'image', 'owner', 'lease_until')
redis.call('ZREM', prefix .. 'running', job_id)
redis.call('ZADD', prefix .. 'expiring', ARGV[6], job_id)
return 1
"""

CANCEL = """
local prefix, job_id = ARGV[1], ARGV[2]
local job = prefix .. 'job:' .. job_id
local status = redis.call('HGET', job, 'status')
if status == 'queued' then
  redis.call('HSET', job, 'status', 'canceled', 'finished_at', ARGV[3], 'expires_at', ARGV[4], 'error', ARGV[5])
  redis.call('HDEL', job, 'image')
  redis.call('ZREM', prefix .. 'queue', job_id)
  redis.call('ZADD', prefix .. 'expiring', ARGV[4], job_id)
elseif status == 'running' then
  redis.call('HSET', job, 'cancel_requested', 1)
end
return status
"""

PURGE = """
local prefix, now, tombstone_until = ARGV[1], ARGV[2], ARGV[3]
local expired = {}
for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', prefix .. 'expiring', '-inf', '(' .. now)) do
  local job = prefix .. 'job:' .. job_id
  if redis.call('HGET', job, 'status') == 'expired' then
    redis.call('DEL', job)
    redis.call('ZREM', prefix .. 'expiring', job_id)
  else
    local key = redis.call('HGET', job, 'idempotency_key')
    if key and key ~= '' then
      redis.call('DEL', prefix .. 'idem:' .. key)
    end
    local created_at = redis.call('HGET', job, 'created_at')
    redis.call('DEL', job, job .. ':events')
    redis.call('HSET', job, 'id', job_id, 'status', 'expired', 'request', '{}', 'fingerprint', '',
      'created_at', created_at, 'expires_at', tombstone_until, 'attempts', 0, 'cancel_requested', 0)
    redis.call('ZADD', prefix .. 'expiring', tombstone_until, job_id)
    table.insert(expired, job_id)
  end
end
return expired
"""


def optional_float(value: bytes | None) -> float | None:
    return None if value is None else float(value)


def optional_json(value: bytes | None) -> dict | None:
    return None if not value else json.loads(value)


def record_of(fields: dict[bytes, bytes]) -> JobRecord:
    text = {name.decode(): value for name, value in fields.items() if name != b"image"}
    return JobRecord(
        id=text["id"].decode(),
        status=JobStatus(text["status"].decode()),
        request=json.loads(text["request"]),
        fingerprint=text["fingerprint"].decode(),
        webhook=text.get("webhook", b"").decode() or None,
        created_at=float(text["created_at"]),
        started_at=optional_float(text.get("started_at")),
        finished_at=optional_float(text.get("finished_at")),
        expires_at=optional_float(text.get("expires_at")),
        owner=text["owner"].decode() if "owner" in text else None,
        lease_until=optional_float(text.get("lease_until")),
        attempts=int(text["attempts"]),
        cancel_requested=text["cancel_requested"] == b"1",
        result=optional_json(text.get("result")),
        error=optional_json(text.get("error")),
    )


def json_or_empty(value: dict | None) -> str:
    return "" if value is None else json.dumps(value)


class RedisJobStore:
    def __init__(self, client: redis.Redis, prefix: str = "portrait-studio:") -> None:
        self._redis, self._prefix = client, prefix
        self._submit = client.register_script(SUBMIT)
        self._claim = client.register_script(CLAIM)
        self._renew = client.register_script(RENEW)
        self._finish = client.register_script(FINISH)
        self._cancel = client.register_script(CANCEL)
        self._purge = client.register_script(PURGE)

    @classmethod
    def at(cls, url: str) -> RedisJobStore:
        return cls(redis.Redis.from_url(url))

    def _job(self, job_id: str) -> str:
        return f"{self._prefix}job:{job_id}"

    async def submit(self, job: NewJob, max_queued: int, now: float) -> tuple[JobRecord, bool]:
        outcome, job_id = await self._submit(args=[
            self._prefix, new_job_id(), job.idempotency_key or "", job.fingerprint, max_queued,
            json.dumps(job.request), job.webhook or "", repr(now), job.image,
        ])
        if outcome == b"reused":
            raise IdempotencyKeyReusedError(job.idempotency_key)
        if outcome == b"full":
            raise QueueFullError(f"{max_queued} jobs are queued")
        return await self.get(job_id.decode()), outcome == b"created"

    async def get(self, job_id: str) -> JobRecord | None:
        fields = await self._redis.hgetall(self._job(job_id))
        return record_of(fields) if fields else None

    async def image(self, job_id: str) -> bytes | None:
        return await self._redis.hget(self._job(job_id), "image")

    async def queue_position(self, job_id: str) -> int | None:
        rank = await self._redis.zrank(f"{self._prefix}queue", job_id)
        return None if rank is None else rank + 1

    async def claim(self, owner: str, lease_s: float, now: float) -> JobRecord | None:
        job_id = await self._claim(args=[self._prefix, owner, repr(now), repr(now + lease_s)])
        return None if job_id is None else await self.get(job_id.decode())

    async def renew(self, job_id: str, owner: str, lease_s: float, now: float) -> bool:
        return await self._renew(args=[self._prefix, job_id, owner, repr(now + lease_s)]) == 1

    async def add_event(self, job_id: str, name: str, data: dict) -> JobEvent:
        seq = await self._redis.rpush(f"{self._job(job_id)}:events", json.dumps({"name": name, "data": data}))
        return JobEvent(seq, name, data)

    async def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        items = await self._redis.lrange(f"{self._job(job_id)}:events", after, -1)
        return [JobEvent(after + index + 1, **json.loads(item)) for index, item in enumerate(items)]

    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        now: float,
        retention_s: float,
        result: dict | None = None,
        error: dict | None = None,
    ) -> bool:
        check_outcome(status)
        return await self._finish(args=[
            self._prefix, job_id, owner, status.value, repr(now), repr(now + retention_s), json_or_empty(result),
            json_or_empty(error),
        ]) == 1

    async def cancel(self, job_id: str, now: float, retention_s: float, error: dict) -> JobRecord | None:
        await self._cancel(args=[self._prefix, job_id, repr(now), repr(now + retention_s), json.dumps(error)])
        return await self.get(job_id)

    async def purge(self, now: float, tombstone_s: float) -> list[str]:
        expired = await self._purge(args=[self._prefix, repr(now), repr(now + tombstone_s)])
        return [job_id.decode() for job_id in expired]

    async def close(self) -> None:
        await self._redis.aclose()

    async def queued_count(self) -> int:
        return await self._redis.zcard(f"{self._prefix}queue")
