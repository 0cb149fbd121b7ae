"""Stage 3 deployment: the blend sampler, batched across requests of the same style, streaming step progress.

A call streams ``{"event": "step", …}`` items and ends with a ``BlendResult`` whose candidates stay in the object
store (``ray.put``), so the images go from this replica to the fusion ranker without passing the ingress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import ray
from ray import serve

from deployments.layout_generator import PlannedLayout
from deployments.metrics import StageMetrics
from deployments.logs import log_documented_errors_once
from deployments.replica import ComputeThread
from deployments.staged import Staged
from deployments.style_cache import StyleCache
from serve_app.pipeline.blend import BlendRun
from serve_app.pipeline.fusion import Candidate, make_candidates
from serve_app.pipeline.lora import StyleAdapters
from serve_app.pipeline.models import load_models
from serve_app.pipeline.sampling import schedule_groups
from serve_app.pipeline.timing import stopwatch
from serve_app.schemas import PortraitAppArgs
from serve_app.styles import StyleCatalog

STAGE = "blend"


@dataclass(frozen=True)
class BlendResult:
    candidates: ray.ObjectRef  # Staged[list[Candidate]]
    lora_cache: str


class BlendSampler:
    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.pipe = load_models(args.model_settings()).diffusion
        self.metrics = StageMetrics(STAGE)
        self.styles = StyleCache(
            StyleAdapters(self.pipe), StyleCatalog(args.styles_dir), args.lora_cache_size, self.metrics, self.compute
        )
        self.sample_batch.set_max_batch_size(args.max_batch_size)
        self.sample_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    async def __call__(self, planned: Staged[PlannedLayout]) -> AsyncIterator[dict | BlendResult]:
        # A batched generator cannot be streamed to a handle directly: this plain generator wraps it.
        async for item in self.sample_batch(planned):
            if item is not None:
                yield item

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def sample_batch(self, requests: list[Staged[PlannedLayout]]) -> AsyncIterator[list]:
        """Yields one item per request each step: its step event, or None while another schedule group runs."""
        self.metrics.batch(len(requests))
        plans = [request.value.plan for request in requests]
        candidates: list[list[Candidate]] = [[] for _ in requests]
        timings: dict[str, float] = {}
        with stopwatch(timings, STAGE):
            async with self.styles.activated() as (_, hit):
                for group in schedule_groups(plans):
                    layouts = [requests[i].value.layout for i in group]
                    run = await self.compute.run(
                        BlendRun, self.pipe, [plans[i] for i in group], [l.latents for l in layouts], [l.masks for l in layouts]
                    )
                    while run.done < run.total:
                        done = await self.compute.run(run.step)
                        event = {"event": "step", "stage": STAGE, "step": done, "total": run.total}
                        yield [event if i in group else None for i in range(len(requests))]
                    for index, layout, images in zip(group, layouts, await self.compute.run(run.images)):
                        candidates[index] = make_candidates(images, plans[index].seeds, layout.masks)
        self.metrics.latency(timings[STAGE])
        cache = "hit" if hit else "miss"
        yield [
            BlendResult(ray.put(Staged(found, {**request.timings, **timings})), cache)
            for request, found in zip(requests, candidates)
        ]
