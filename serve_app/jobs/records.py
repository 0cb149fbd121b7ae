"""What a job store keeps of an asynchronous portrait job, in the store's own terms (no HTTP, no Ray): the job's
record, its events, and the errors a store answers with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    """Past its retention: everything of the job is deleted but its id, kept a while to answer 410."""


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


def check_outcome(status: JobStatus) -> None:
    """What a store's ``finish`` takes: an outcome, not a status on the way to one."""
    if status not in FINISHED:
        raise ValueError(f"a job finishes as one of {sorted(FINISHED)}, not {status}")


def new_job_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class NewJob:
    """What a submit stores: the request as the API validated it (JSON-ready), a fingerprint of the submitted body
    (for ``Idempotency-Key``), the input images (packed by ``serve_app.jobs.images``), and where to send the
    outcome."""

    request: dict
    fingerprint: str
    image: bytes
    webhook: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class JobRecord:
    id: str
    status: JobStatus
    request: dict
    fingerprint: str
    webhook: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    expires_at: float | None
    """When the record is deleted: ``job_retention_s`` after the job finished (None while it has not)."""
    owner: str | None
    """The ingress replica running the job, while its lease (``lease_until``) holds."""
    lease_until: float | None
    attempts: int
    """How many times a replica took the job (more than one after a replica died holding it)."""
    cancel_requested: bool
    result: dict | None
    error: dict | None


@dataclass(frozen=True)
class JobEvent:
    """One event of a job, numbered from 1 in the order they happened (the SSE ``id:``)."""

    seq: int
    name: str
    data: dict


class JobStoreError(Exception):
    pass


class QueueFullError(JobStoreError):
    """``max_queued_jobs`` jobs are queued already."""


class IdempotencyKeyReusedError(JobStoreError):
    """The key was used for a submit with another body."""
