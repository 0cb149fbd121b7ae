"""Stage 2 deployment: layout latents and face masks, batched across requests of the same style."""

from __future__ import annotations

from dataclasses import dataclass

from ray import serve

from deployments.metrics import StageMetrics
from deployments.logs import log_documented_errors_once
from deployments.replica import ComputeThread
from deployments.staged import PortraitJob, Staged, merged_timings
from deployments.style_cache import StyleCache
from serve_app.pipeline.layout import Layout, generate_layouts
from serve_app.pipeline.lora import StyleAdapters
from serve_app.pipeline.lora_validation import LoraLimits, LoraSummary, validate_lora
from serve_app.pipeline.models import load_models
from serve_app.pipeline.portrait import make_plan, style_prior
from serve_app.pipeline.preprocess import Reference
from serve_app.pipeline.sampling import SamplingPlan, schedule_groups
from serve_app.pipeline.timing import stopwatch
from serve_app.schemas import PortraitAppArgs
from serve_app.styles import StyleCatalog

STAGE = "layout"


@dataclass(frozen=True)
class PlannedLayout:
    """A request's sampling plan with its layout: what the blend sampler continues from."""

    plan: SamplingPlan
    layout: Layout
    lora_cache: str


class LayoutGenerator:
    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        models = load_models(args.model_settings())
        self.pipe, self.faces = models.diffusion, models.faces
        self.metrics = StageMetrics(STAGE)
        self.styles = StyleCache(
            StyleAdapters(self.pipe), StyleCatalog(args.styles_dir), args.lora_cache_size, self.metrics, self.compute
        )
        self.lora_limits = LoraLimits(max_bytes=args.max_lora_bytes, max_rank=args.max_lora_rank)
        self.generate_batch.set_max_batch_size(args.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    async def validate_lora(self, data: bytes) -> LoraSummary:
        """Check an uploaded style LoRA against this replica's base model (dry-run load included)."""
        async with self.styles.exclusive():
            return await self.compute.run(
                validate_lora, self.pipe, data, self.lora_limits, self.styles.adapters.dry_run
            )

    async def __call__(self, reference: Staged[Reference], job: PortraitJob) -> Staged[PlannedLayout]:
        return await self.generate_batch((reference, job))

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def generate_batch(self, requests: list[tuple[Staged[Reference], PortraitJob]]) -> list[Staged[PlannedLayout]]:
        self.metrics.batch(len(requests))
        timings: dict[str, float] = {}
        with stopwatch(timings, STAGE):
            async with self.styles.activated() as (style, hit):
                plans = [make_plan(style, job.options, reference.value, job.seed) for reference, job in requests]
                layouts: list[Layout | None] = [None] * len(plans)
                for group in schedule_groups(plans):
                    found = await self.compute.run(
                        generate_layouts,
                        self.pipe,
                        self.faces,
                        [plans[i] for i in group],
                        [style_prior(style, plans[i].size) for i in group],
                    )
                    for index, layout in zip(group, found):
                        layouts[index] = layout
        self.metrics.latency(timings[STAGE])
        cache = "hit" if hit else "miss"
        return [
            Staged(PlannedLayout(plan, layout, cache), {**merged_timings(reference), **timings})
            for plan, layout, (reference, _) in zip(plans, layouts, requests)
        ]
