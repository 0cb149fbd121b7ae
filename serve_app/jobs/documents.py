"""A job as the API and its webhook show it (``JobResponse``), from its record, its events and its kept result."""

from __future__ import annotations

from datetime import UTC, datetime

from serve_app.jobs.records import JobEvent, JobRecord, JobStatus
from serve_app.jobs.results import JobResults
from serve_app.jobs.store import JobStore
from serve_app.schemas import JobProgress, JobResponse, WebhookAttempt, WebhookDelivery

PROGRESS_EVENTS = ("stage_started", "step")
WEBHOOK_EVENT = "webhook"
"""One delivery attempt of the job's webhook: ``WebhookAttempt``'s fields and the delivery's ``state`` after it."""


def timestamp(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


async def job_response(store: JobStore, results: JobResults, record: JobRecord) -> JobResponse:
    events = await store.events(record.id)
    return JobResponse(
        id=record.id,
        status=record.status.value,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        queue_position=await store.queue_position(record.id) if record.status == JobStatus.QUEUED else None,
        progress=progress(events) if record.status == JobStatus.RUNNING else None,
        result=None if record.result is None else await results.document(record.id, record.result),
        error=record.error,
        webhook=None if record.webhook is None else webhook_delivery(record.webhook, events),
    )


def progress(events: list[JobEvent]) -> JobProgress | None:
    """Where a running job is: its last stage or step."""
    latest = next((event for event in reversed(events) if event.name in PROGRESS_EVENTS), None)
    return None if latest is None else JobProgress(**latest.data)


def webhook_delivery(url: str, events: list[JobEvent]) -> WebhookDelivery:
    attempts = [event.data for event in events if event.name == WEBHOOK_EVENT]
    return WebhookDelivery(
        url=url,
        state=attempts[-1]["state"] if attempts else "pending",
        attempts=[WebhookAttempt(**attempt) for attempt in attempts],
    )
