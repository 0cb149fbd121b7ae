"""Application metrics (Prometheus through Ray, names prefixed ``ray_``): stage latency, batch sizes, denoising
steps run, requests and their estimated work in flight at the ingress, LoRA cache hits and misses, and returned
portraits by outcome (accepted or why rejected, ``unsafe_content`` among them)."""

from __future__ import annotations

from collections.abc import Iterable

from ray.serve import metrics

from deployments.stream import Finished

LATENCY_BOUNDARIES_MS = [10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]


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
