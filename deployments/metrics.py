"""Application metrics (Prometheus through Ray, names prefixed ``ray_``): stage latency, batch sizes, denoising
steps run, requests and their estimated work in flight at the ingress, LoRA cache hits and misses, returned
portraits by outcome (accepted or why rejected, ``unsafe_content`` among them), and asynchronous jobs: the queue's
length, the wait for a replica, outcomes and webhook deliveries."""

from __future__ import annotations

from collections.abc import Iterable

from ray.serve import metrics

from deployments.stream import Finished

LATENCY_BOUNDARIES_MS = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]
WAIT_BOUNDARIES_S = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]


class StageMetrics:
    """Created inside a replica (metrics are per process)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._latency = metrics.Histogram(
            "portrait_stage_latency_ms",
            description="Time a stage spends on a request (a batch's time for each of its requests).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("stage",),
        )
        self._batch = metrics.Histogram(
            "portrait_batch_size",
            description="Requests handled together in one batch.",
            boundaries=BATCH_BOUNDARIES,
            tag_keys=("stage",),
        )
        self._lora = metrics.Counter(
            "portrait_lora_cache",
            description="Style LoRA lookups in a replica's cache, by result (hit or miss).",
            tag_keys=("stage", "result"),
        )
        self._steps = metrics.Counter(
            "portrait_denoising_steps",
            description="Denoising steps a diffusion stage ran (one per step of a batch, whatever its size).",
            tag_keys=("stage",),
        )
        self._images = metrics.Counter(
            "portrait_images",
            description="Portraits returned, by outcome: accepted, or the reason they only fill the K.",
            tag_keys=("stage", "outcome"),
        )

    def finished(self, milliseconds: float, lora_cache: str | None = None) -> Finished:
        """Record a request's time in the stage; the event that announces its result."""
        self._latency.observe(milliseconds, tags={"stage": self.stage})
        return Finished(self.stage, milliseconds, lora_cache)

    def batch(self, size: int) -> None:
        self._batch.observe(size, tags={"stage": self.stage})

    def denoising_step(self) -> None:
        self._steps.inc(tags={"stage": self.stage})

    def lora_lookup(self, hit: bool) -> None:
        self._lora.inc(tags={"stage": self.stage, "result": "hit" if hit else "miss"})

    def images(self, rejected: Iterable[str | None]) -> None:
        for reason in rejected:
            self._images.inc(tags={"stage": self.stage, "outcome": reason or "accepted"})


class InFlightGauges:
    """What the ingress admitted and is not done: requests, and their estimated work in cost units."""

    def __init__(self) -> None:
        self._requests = metrics.Gauge(
            "portrait_requests_in_flight", description="Requests admitted by the ingress and not done."
        )
        self._cost = metrics.Gauge(
            "portrait_cost_in_flight",
            description="Estimated work of the requests admitted and not done, in cost units (serve_app.admission).",
        )

    def set(self, requests: int, cost: float) -> None:
        self._requests.set(requests)
        self._cost.set(cost)


class JobMetrics:
    """An ingress replica's asynchronous jobs: the store's queue as its job runner sees it, the wait from submit to a
    replica taking a job, jobs ended by outcome, and webhook deliveries by result."""

    def __init__(self) -> None:
        self._queued = metrics.Gauge(
            "portrait_jobs_queued",
            description="Jobs queued in the store, counted by each ingress replica's job runner as it polls (every "
            "replica reports the same shared queue: take the max over replicas, not the sum).",
        )
        self._wait = metrics.Histogram(
            "portrait_job_wait_s",
            description="Seconds from a job's submit to an ingress replica taking it (its first start; a take-over "
            "after a replica died is not counted again).",
            boundaries=WAIT_BOUNDARIES_S,
        )
        self._jobs = metrics.Counter(
            "portrait_jobs",
            description="Jobs ended, by outcome: succeeded, failed or canceled.",
            tag_keys=("outcome",),
        )
        self._webhooks = metrics.Counter(
            "portrait_webhook_deliveries",
            description="Webhook delivery attempts, by the delivery's state after each: delivered, pending (it "
            "failed; a retry follows) or failed (it failed and none follows: retries ran out, a 410, a refused "
            "address).",
            tag_keys=("result",),
        )

    def queued(self, jobs: int) -> None:
        self._queued.set(jobs)

    def taken(self, waited_s: float, attempts: int) -> None:
        """A replica took a job ``waited_s`` after its submit: its wait, the first time (``attempts`` 1)."""
        if attempts == 1:
            self._wait.observe(waited_s)

    def ended(self, outcome: str) -> None:
        self._jobs.inc(tags={"outcome": outcome})

    def webhook(self, result: str) -> None:
        self._webhooks.inc(tags={"result": result})
