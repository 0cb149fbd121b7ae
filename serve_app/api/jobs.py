"""Asynchronous portrait jobs: ``POST /v1/jobs`` (or ``POST /v1/portraits`` with ``Prefer: respond-async``) queues
the request and answers 202 at once; ``GET /v1/jobs/{id}`` follows it (``Prefer: wait=N`` holds the answer until
it ends), ``/events`` streams its events (``Last-Event-ID`` resumes), ``/cancel`` stops it. Jobs live in the store
``jobs_store`` names; the ingress replicas' job runners take them (``serve_app.jobs.runner``)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.admission import Admission
from serve_app.api.dependencies import Admitting, Catalog, Jobs, Settings
from serve_app.api.errors import documented
from serve_app.api.portrait_input import REQUEST_BODY, PortraitInput, read_portrait_input
from serve_app.errors import (
    IdempotencyKeyReusedError,
    JobExpiredError,
    JobFinishedError,
    JobNotFoundError,
    JobQueueFullError,
)
from serve_app.jobs import records
from serve_app.jobs.records import FINISHED, JobRecord, JobStatus, NewJob
from serve_app.jobs.runner import FINAL_EVENTS, POLL_S, canceled_error, fingerprint, job_request
from serve_app.jobs.store import JobStore
from serve_app.portrait_request import portrait_request, resolve_seed
from serve_app.schemas import JobProgress, JobResponse
from serve_app.settings import PortraitAppArgs
from serve_app.styles import StyleCatalog

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60
WAIT = re.compile(r"\bwait=(\d+)")
JOB_STREAM = {"text/event-stream": {"schema": {
    "description": "every event of the job so far, then live ones, each with an id: (resume with Last-Event-ID): "
    "stage_started, step, stage_finished, retry, then result (the PortraitResponse) or error (an ErrorResponse)",
    "type": "string",
}}}


JOB_CREATED = {"description": "queued as a job (Location: /v1/jobs/{id})", "model": JobResponse}


def timestamp(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


async def job_response(store: JobStore, record: JobRecord) -> JobResponse:
    progress = None
    if record.status == JobStatus.RUNNING:
        progress = next(
            (JobProgress(**event.data) for event in reversed(await store.events(record.id))
             if event.name in ("stage_started", "step")),
            None,
        )
    return JobResponse(
        id=record.id,
        status=record.status.value,
        created_at=timestamp(record.created_at),
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        expires_at=timestamp(record.expires_at),
        queue_position=await store.queue_position(record.id) if record.status == JobStatus.QUEUED else None,
        progress=progress,
        result=record.result,
        error=record.error,
    )


async def existing(store: JobStore, job_id: str) -> JobRecord:
    record = await store.get(job_id)
    if record is None:
        raise JobNotFoundError(f"no job {job_id!r}")
    if record.status == JobStatus.EXPIRED:
        raise JobExpiredError(f"job {job_id!r} finished longer ago than this service keeps jobs; it is deleted")
    return record


async def submit_job(
    request: Request,
    body: PortraitInput,
    settings: PortraitAppArgs,
    catalog: StyleCatalog,
    store: JobStore,
    admission: Admission,
) -> JSONResponse:
    """Queue a portrait request as a job: 202 with the job, or 200 with the job an ``Idempotency-Key`` made."""
    style = catalog.get(body.options.style)
    seed = resolve_seed(body.options)
    admission.cost(portrait_request(body.options, style.manifest, seed))  # refused now (422), not when it runs
    new = NewJob(
        request=job_request(body.options, style.versioned_id, seed),
        fingerprint=fingerprint(body.options, body.image),
        image=body.image,
        idempotency_key=request.headers.get("idempotency-key"),
    )
    try:
        record, created = await store.submit(new, settings.max_queued_jobs, time.time())
    except records.QueueFullError:
        raise JobQueueFullError(f"{settings.max_queued_jobs} jobs are queued; submit again shortly") from None
    except records.IdempotencyKeyReusedError:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was sent before with another body; use a new key for a new request",
            {"Idempotency-Key": "used before with another body"},
        ) from None
    document = (await job_response(store, record)).model_dump(mode="json")
    return JSONResponse(document, status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{record.id}"})


@router.post(
    "",
    status_code=202,
    response_model=JobResponse,
    responses={200: {"description": "the job this Idempotency-Key made before", "model": JobResponse},
               **documented(400, 404, 409, 410, 413, 415, 422, 503)},
    openapi_extra={"requestBody": REQUEST_BODY},
    summary="Queue a portrait request as a job (the body of POST /v1/portraits)",
)
async def create_job(
    request: Request, settings: Settings, catalog: Catalog, store: Jobs, admission: Admitting
) -> JSONResponse:
    body = await read_portrait_input(request, settings.max_image_bytes)
    return await submit_job(request, body, settings, catalog, store, admission)


@router.get(
    "/{job_id}",
    response_model=JobResponse,
    responses=documented(404, 410),
    summary="A job: its status, progress, and result or error (Prefer: wait=N holds the answer up to N s)",
)
async def get_job(job_id: str, request: Request, store: Jobs) -> JobResponse:
    record = await existing(store, job_id)
    wanted = WAIT.search(request.headers.get("prefer", ""))
    deadline = time.monotonic() + min(int(wanted.group(1)), MAX_WAIT_S) if wanted else 0.0
    while record.status not in FINISHED and time.monotonic() < deadline:
        await asyncio.sleep(POLL_S)
        record = await existing(store, job_id)
    return await job_response(store, record)


@router.get(
    "/{job_id}/events",
    responses={200: {"content": JOB_STREAM}, **documented(404, 410)},
    summary="The job's events as Server-Sent Events, from the first (or after Last-Event-ID) to its outcome",
)
async def job_events(job_id: str, request: Request, store: Jobs) -> StreamingResponse:
    await existing(store, job_id)
    last = request.headers.get("last-event-id", "0")
    after = int(last) if last.isdigit() else 0
    return StreamingResponse(event_stream(store, job_id, after), media_type="text/event-stream")


async def event_stream(store: JobStore, job_id: str, after: int) -> AsyncIterator[str]:
    while True:
        for event in await store.events(job_id, after):
            yield f"id: {event.seq}\nevent: {event.name}\ndata: {json.dumps(event.data)}\n\n"
            after = event.seq
            if event.name in FINAL_EVENTS:
                return
        record = await store.get(job_id)
        if record is None or record.status == JobStatus.EXPIRED:
            return
        await asyncio.sleep(POLL_S)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobResponse,
    responses=documented(404, 409, 410),
    summary="Cancel a job: a queued one never runs, a running one's stage calls stop",
)
async def cancel_job(job_id: str, settings: Settings, store: Jobs) -> JSONResponse:
    record = await existing(store, job_id)
    if record.status in FINISHED:
        raise JobFinishedError(f"job {job_id!r} already {record.status.value}")
    canceled = await store.cancel(job_id, time.time(), settings.job_retention_s)
    if canceled.status == JobStatus.CANCELED:  # it was queued: no runner will say so
        await store.add_event(job_id, "error", canceled_error())
    return JSONResponse((await job_response(store, canceled)).model_dump(mode="json"), status_code=202)
