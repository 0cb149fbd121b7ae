"""The ingress replica's job runner: it takes queued jobs (oldest first) while admission has room, runs each
through the same stage graph, admission and retry as a synchronous request, holds the job's lease while it runs,
records its events and outcome, and cancels its stage calls when the job is canceled. A replica that dies stops
renewing its leases; another takes its jobs over (the seed is fixed, so the result is the same)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid

from deployments.metrics import JobMetrics
from deployments.stream import PortraitJob
from serve_app.admission import Admission
from serve_app.errors import InternalError, JobCanceledError, documented_error
from serve_app.graph import StageGraph
from serve_app.jobs.images import unpack_images
from serve_app.jobs.records import JobRecord, JobStatus
from serve_app.jobs.results import JobResults
from serve_app.jobs.store import JobStore
from serve_app.jobs.tasks import TaskSet
from serve_app.jobs.webhooks import WebhookSender
from serve_app.portrait_request import portrait_request
from serve_app.portrait_response import portrait_response
from serve_app.schemas import PortraitOptions
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog

logger = logging.getLogger("ray.serve")

POLL_S = 0.25
PURGE_EVERY_S = 60.0
TOMBSTONE_S = 7 * 24 * 3600.0
"""How long the id of a job past its retention answers 410 ``job_expired`` (then 404)."""
FINAL_EVENTS = ("result", "error")


def canceled_error() -> dict:
    """A canceled job's ``error`` (and its last event), whether it was queued or running."""
    return JobCanceledError("the job was canceled").to_dict()


def options_document(options: PortraitOptions) -> dict:
    """The options as sent, JSON-ready (a multipart form's image left out)."""
    return options.model_dump(mode="json", include=set(PortraitOptions.model_fields))


def job_request(options: PortraitOptions, versioned_style: str, seed: int) -> dict:
    """What a job record keeps of its request: the options as sent, the style version and the seed resolved."""
    return {"options": options_document(options), "style": versioned_style, "seed": seed}


def fingerprint(options: PortraitOptions, image: bytes, webhook: str | None) -> str:
    """Of a submitted body, for ``Idempotency-Key``: the options as sent, the webhook and the images' bytes (as
    ``pack_images`` keeps them)."""
    sent = {**options_document(options), "webhook": webhook}
    digest = hashlib.sha256(json.dumps(sent, sort_keys=True).encode())
    digest.update(hashlib.sha256(image).digest())
    return digest.hexdigest()


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        results: JobResults,
        webhooks: WebhookSender,
        metrics: JobMetrics,
        graph: StageGraph,
        admission: Admission,
        catalog: StyleCatalog,
        args: PortraitAppArgs,
    ) -> None:
        self.store, self.results, self.webhooks, self.metrics = store, results, webhooks, metrics
        self.graph, self.admission, self.catalog, self.args = graph, admission, catalog, args
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running = TaskSet()
        self._queued_here = asyncio.Event()
        self._news: dict[str | None, asyncio.Event] = {}

    def nudge(self) -> None:
        """A job was queued through this replica: look for work now, not at the next poll."""
        self._queued_here.set()

    async def news(self, job_id: str | None = None) -> None:
        """Until the job ``job_id``, if this replica runs it, records something (an event, its outcome) — for None,
        until any job of this replica ends — and ``POLL_S`` at most: what waiting on a job waits for between reads
        of the store (a job another replica runs is seen at the poll)."""
        news = self._news.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(news.wait(), POLL_S)
        except TimeoutError:  # nothing came; forget it, as a job another replica runs would never clear it
            if self._news.get(job_id) is news:
                del self._news[job_id]

    def _announce(self, job_id: str | None) -> None:
        if (news := self._news.pop(job_id, None)) is not None:
            news.set()

    async def run_forever(self) -> None:
        """Take jobs while there is room, purge expired ones now and then; until cancelled."""
        purged_at = 0.0
        while True:
            try:
                if time.time() - purged_at > min(PURGE_EVERY_S, self.args.job_retention_s / 4):
                    purged_at = time.time()
                    await self.results.delete(await self.store.purge(purged_at, TOMBSTONE_S))
                self.metrics.queued(await self.store.queued_count())
                record = await self._claim_if_room()
            except Exception:  # a store that went away: log, wait, try again
                logger.exception("job runner: the jobs store failed; retrying")
                record = None
            if record is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued_here.wait(), POLL_S)
                self._queued_here.clear()
                continue
            self._running.start(self.run(record))

    async def stop(self) -> None:
        await self._running.stop()

    async def _claim_if_room(self) -> JobRecord | None:
        if len(self._running) >= self.args.max_in_flight or not self.admission.has_room():
            return None
        return await self.store.claim(self.owner, self.args.job_lease_s, time.time())

    async def run(self, record: JobRecord) -> None:
        """Run one claimed job to its outcome, holding its lease meanwhile. Cancelled by the lease holder (the job
        was canceled, or another replica took it over) or by ``stop`` (this replica is going away: the job is left
        for another to take over once the lease runs out)."""
        job_id = record.id
        self.metrics.taken(time.time() - record.created_at, record.attempts)
        stopped_by: list[str] = []
        lease = asyncio.create_task(self._hold_lease(job_id, asyncio.current_task(), stopped_by))
        try:
            if record.cancel_requested:  # canceled while the replica that held it died
                stopped_by.append("canceled")
                raise asyncio.CancelledError
            images = unpack_images(await self.store.image(job_id))
            job = self._portrait_job(record, len(images))
            cost = self.admission.cost(job.request)
            while not self.admission.has_room(cost):
                await self.news()  # a job of this replica that ends frees room
            with self.admission.admitted(cost):
                result = await self.graph.generate(job, images, lambda name, data: self._event(job_id, name, data))
            kept = await self.results.keep(job_id, portrait_response(job, result).model_dump(mode="json"))
            await self._event(job_id, "result", kept)
            await self._finish(job_id, JobStatus.SUCCEEDED, result=kept)
        except asyncio.CancelledError:
            if stopped_by != ["canceled"]:
                raise
            error = canceled_error()
            await self._event(job_id, "error", error)
            await self._finish(job_id, JobStatus.CANCELED, error=error)
        except Exception as exception:
            error = documented_error(exception)
            if error is None:
                logger.exception("job %s failed", job_id)
                error = InternalError(f"internal error; job {job_id}")
            await self._event(job_id, "error", error.to_dict())
            await self._finish(job_id, JobStatus.FAILED, error=error.to_dict())
        finally:
            lease.cancel()

    def _portrait_job(self, record: JobRecord, people: int) -> PortraitJob:
        options = PortraitOptions.model_validate(record.request["options"])
        style = self.catalog.version(record.request["style"])
        request = portrait_request(options, style.manifest, record.request["seed"], people)
        return PortraitJob(record.id, style.versioned_id, request, options.return_masks)

    async def _hold_lease(self, job_id: str, run: asyncio.Task, stopped_by: list[str]) -> None:
        """Renew the lease a few times per lease; cancel the run, saying why, when the job is canceled or the
        lease was lost (another replica took the job over and runs it now)."""
        renewed = time.time()
        while True:
            await asyncio.sleep(POLL_S)
            record = await self.store.get(job_id)
            if record is not None and record.cancel_requested:
                stopped_by.append("canceled")
            elif time.time() - renewed > self.args.job_lease_s / 3:
                renewed = time.time()
                if await self.store.renew(job_id, self.owner, self.args.job_lease_s, renewed):
                    continue
                stopped_by.append("lost")
            else:
                continue
            run.cancel()
            return

    async def _event(self, job_id: str, name: str, data: dict) -> None:
        await self.store.add_event(job_id, name, data)
        self._announce(job_id)

    async def _finish(self, job_id: str, status: JobStatus, **outcome: dict) -> None:
        """Record the outcome, unless another replica took the job over meanwhile; then its webhook is sent."""
        if await self.store.finish(job_id, self.owner, status, time.time(), self.args.job_retention_s, **outcome):
            self.metrics.ended(status.value)
            self._announce(job_id)
            self._announce(None)
            self.webhooks.job_ended(await self.store.get(job_id))
