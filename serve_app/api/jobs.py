"""Asynchronous portrait jobs: ``POST /v1/jobs`` (or ``POST /v1/portraits`` with ``Prefer: respond-async``) queues
the request and answers 202 at once; ``GET /v1/jobs/{id}`` follows it (``Prefer: wait=N`` holds the answer until
it ends), ``/events`` streams its events (``Last-Event-ID`` resumes), ``/cancel`` stops it. Jobs live in the store
``jobs_store`` names; the ingress replicas' job runners take them (``serve_app.jobs.runner``)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.dependencies import Services, Studio
from serve_app.api.errors import documented
from serve_app.api.portrait_input import JOB_BODY, PortraitInput, read_portrait_input
from serve_app.errors import (
    IdempotencyKeyReusedError,
    JobExpiredError,
    JobFinishedError,
    JobNotFoundError,
    JobQueueFullError,
)
from serve_app.jobs import records
from serve_app.jobs.documents import job_response
from serve_app.jobs.images import pack_images
from serve_app.jobs.records import FINISHED, JobRecord, JobStatus, NewJob
from serve_app.jobs.runner import FINAL_EVENTS, canceled_error, fingerprint, job_request
from serve_app.jobs.store import JobStore
from serve_app.jobs.webhooks import WebhookRefusedError, checked_target, webhook_secret
from serve_app.pipeline.errors import InvalidParameterError
from serve_app.portrait_request import portrait_request, resolve_seed
from serve_app.schemas import JobEnded, JobResponse

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
webhooks = APIRouter(tags=["jobs"])
"""What this service calls: documented in the OpenAPI document's ``webhooks``."""

MAX_WAIT_S = 60
WAIT = re.compile(r"\bwait=(\d+)")
JOB_STREAM = {"text/event-stream": {"schema": {
    "description": "every event of the job so far, then live ones, each with an id: (resume with Last-Event-ID): "
    "stage_started, step, stage_finished, retry, then result (the PortraitResponse) or error (an ErrorResponse)",
    "type": "string",
}}}


JOB_CREATED = {"description": "queued as a job (Location: /v1/jobs/{id})", "model": JobResponse}


async def existing(store: JobStore, job_id: str) -> JobRecord:
    record = await store.get(job_id)
    if record is None:
        raise JobNotFoundError(f"no job {job_id!r}")
    if record.status == JobStatus.EXPIRED:
        raise JobExpiredError(f"job {job_id!r} finished longer ago than this service keeps jobs; it is deleted")
    return record


async def checked_webhook(url: str | None, allowed_hosts: list[str]) -> None:
    """A webhook this service will send (422 naming the field, else): a secret to sign with, an allowed address."""
    if url is not None:
        try:
            webhook_secret()
            await checked_target(url, allowed_hosts)
        except WebhookRefusedError as refused:
            raise InvalidParameterError(f"webhook refused: {refused}", {"webhook": str(refused)}) from None


async def submit_job(request: Request, body: PortraitInput, services: Services) -> JSONResponse:
    """Queue a portrait request as a job: 202 with the job, or 200 with the job an ``Idempotency-Key`` made."""
    settings, store = services.settings, services.jobs
    style = services.catalog.get(body.options.style)
    seed = resolve_seed(body.options)
    # refused now (422), not when it runs
    services.admission.cost(portrait_request(body.options, style.manifest, seed, len(body.images)))
    await checked_webhook(body.webhook, settings.webhook_allowed_hosts)
    image = pack_images(body.images)
    new = NewJob(
        request=job_request(body.options, style.versioned_id, seed),
        fingerprint=fingerprint(body.options, image, body.webhook),
        image=image,
        webhook=body.webhook,
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
    if created:
        services.runner.nudge()
    document = (await job_response(store, services.results, record)).model_dump(mode="json")
    location = request.url_for("get_job", job_id=record.id).path  # under the app's route prefix, if any
    return JSONResponse(document, status_code=202 if created else 200, headers={"Location": location})


@router.post(
    "",
    status_code=202,
    response_model=JobResponse,
    responses={200: {"description": "the job this Idempotency-Key made before", "model": JobResponse},
               **documented(400, 404, 409, 410, 413, 415, 422, 503)},
    openapi_extra={"requestBody": JOB_BODY.openapi},
    summary="Queue a portrait request as a job (the body of POST /v1/portraits, plus an optional webhook)",
)
async def create_job(request: Request, services: Studio) -> JSONResponse:
    body = await read_portrait_input(request, services.settings.max_image_bytes, JOB_BODY)
    return await submit_job(request, body, services)


@router.get(
    "/{job_id}",
    response_model=JobResponse,
    responses=documented(404, 410),
    summary="A job: its status, progress, and result or error (Prefer: wait=N holds the answer up to N s)",
)
async def get_job(job_id: str, request: Request, services: Studio) -> JobResponse:
    store = services.jobs
    record = await existing(store, job_id)
    wanted = WAIT.search(request.headers.get("prefer", ""))
    deadline = time.monotonic() + min(int(wanted.group(1)), MAX_WAIT_S) if wanted else 0.0
    while record.status not in FINISHED and time.monotonic() < deadline:
        await services.runner.news(job_id)
        record = await existing(store, job_id)
    return await job_response(store, services.results, record)


@router.get(
    "/{job_id}/events",
    responses={200: {"content": JOB_STREAM}, **documented(404, 410)},
    summary="The job's events as Server-Sent Events, from the first (or after Last-Event-ID) to its outcome",
)
async def job_events(job_id: str, request: Request, services: Studio) -> StreamingResponse:
    await existing(services.jobs, job_id)
    last = request.headers.get("last-event-id", "0")
    after = int(last) if last.isdigit() else 0
    return StreamingResponse(event_stream(services, job_id, after), media_type="text/event-stream")


async def event_stream(services: Services, job_id: str, after: int) -> AsyncIterator[str]:
    store, results = services.jobs, services.results
    while True:
        for event in await store.events(job_id, after):
            data = await results.document(job_id, event.data) if event.name == "result" else event.data
            yield f"id: {event.seq}\nevent: {event.name}\ndata: {json.dumps(data)}\n\n"
            after = event.seq
            if event.name in FINAL_EVENTS:
                return
        record = await store.get(job_id)
        if record is None or record.status == JobStatus.EXPIRED:
            return
        await services.runner.news(job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobResponse,
    responses=documented(404, 409, 410),
    summary="Cancel a job: a queued one never runs, a running one's stage calls stop",
)
async def cancel_job(job_id: str, services: Studio) -> JSONResponse:
    store = services.jobs
    record = await existing(store, job_id)
    if record.status in FINISHED:
        raise JobFinishedError(f"job {job_id!r} already {record.status.value}")
    canceled = await store.cancel(job_id, time.time(), services.settings.job_retention_s, canceled_error())
    if canceled.status == JobStatus.CANCELED:  # it was queued: no runner will say so, nor send its webhook
        await store.add_event(job_id, "error", canceled_error())
        services.runner.metrics.ended(canceled.status.value)
        services.webhooks.job_ended(canceled)
    document = await job_response(store, services.results, canceled)
    return JSONResponse(document.model_dump(mode="json"), status_code=202)


@webhooks.post("job-ended", summary="A job ended: POSTed to the job's webhook")
def job_ended(body: JobEnded) -> None:
    """Signed the Standard Webhooks way with ``STUDIO_WEBHOOK_SECRET``: ``webhook-id`` (``msg_<job id>``, the same on
    every retry), ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``. A 2xx
    answer delivers it; 410 stops the retries; anything else is retried (``webhook_retries_s``)."""
