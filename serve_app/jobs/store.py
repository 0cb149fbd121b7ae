"""Where asynchronous jobs live, chosen by one URL (the app argument ``jobs_store``): ``sqlite:///path`` (an embedded
file: one machine, nothing to install, survives a restart) or, for clusters, ``redis://…``; ``env:NAME`` reads the
URL from an environment variable. Every store keeps the same contract (``JobStore``), and
``tests/test_job_store.py`` holds each to it."""

from __future__ import annotations

import os
from typing import Protocol

from serve_app.jobs.records import JobEvent, JobRecord, JobStatus, NewJob


class JobStore(Protocol):
    async def submit(self, job: NewJob, max_queued: int, now: float) -> tuple[JobRecord, bool]:
        """Queue ``job`` and return it with True; for an ``idempotency_key`` already used with the same fingerprint,
        return the job that key made, with False. Raises ``IdempotencyKeyReusedError`` for the key with another
        fingerprint, ``QueueFullError`` when ``max_queued`` jobs are queued. Atomic: of racing submits with one key,
        one makes the job."""
        ...

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, an ``EXPIRED`` tombstone past its retention, or None for an id never seen (or long forgotten)."""
        ...

    async def image(self, job_id: str) -> bytes | None:
        """The job's input image, until the job has finished."""
        ...

    async def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to run, counting queued jobs oldest first; None when it is not queued."""
        ...

    async def claim(self, owner: str, lease_s: float, now: float) -> JobRecord | None:
        """Take the oldest queued job, or a running job whose lease ran out (its replica died): running, for
        ``owner``, until ``now + lease_s``; its attempts counted. None when there is none. Atomic: one owner per
        job at a time. A job taken over with ``cancel_requested`` is for the new owner to finish as canceled."""
        ...

    async def renew(self, job_id: str, owner: str, lease_s: float, now: float) -> bool:
        """Extend ``owner``'s lease; False when the job is no longer running for ``owner``."""
        ...

    async def add_event(self, job_id: str, name: str, data: dict) -> JobEvent:
        """Append an event to the job's history, numbered after the last."""
        ...

    async def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        """The job's events numbered after ``after``, in order."""
        ...

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
        """Record the outcome of ``owner``'s run and delete the input image; kept until ``now + retention_s``.
        False (and nothing changed) when the job is no longer running for ``owner``."""
        ...

    async def cancel(self, job_id: str, now: float, retention_s: float, error: dict) -> JobRecord | None:
        """A queued job is canceled at once with ``error`` (it never runs; its image is deleted); a running one is
        marked ``cancel_requested`` for its owner to stop and finish as canceled; a finished one is left as it is.
        The record after that, or None for an unknown id."""
        ...

    async def purge(self, now: float, tombstone_s: float) -> list[str]:
        """Jobs past their retention become ``EXPIRED`` tombstones (the id alone, until ``now + tombstone_s``);
        tombstones past theirs are deleted. The ids of the jobs that expired (their results are to be deleted)."""
        ...

    async def close(self) -> None: ...

    async def queued_count(self) -> int:
        """How many jobs are queued (the ``portrait_jobs_queued`` gauge)."""
        ...


def open_job_store(url: str) -> JobStore:
    """The store a ``jobs_store`` URL names; ``env:NAME`` names the environment variable that holds the URL (so that
    a password in it comes from a Secret, not from the Serve config everyone can read)."""
    if url.startswith("env:"):
        name = url.removeprefix("env:")
        url = os.environ.get(name, "")
        if not url:
            raise ValueError(f"jobs_store names the environment variable {name}, which is not set")
    scheme = url.partition("://")[0]
    if scheme == "sqlite":
        from serve_app.jobs.sqlite_store import SQLiteJobStore

        return SQLiteJobStore.at(url)
    if scheme in ("redis", "rediss"):
        from serve_app.jobs.redis_store import RedisJobStore

        return RedisJobStore.at(url)
    raise ValueError(f"jobs_store must be a sqlite:/// or redis:// URL, got {url!r}")
