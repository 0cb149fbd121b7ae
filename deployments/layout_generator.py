"""Stage 2 deployment: layout latents and face masks, batched across requests of the same style."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray import serve

from deployments.callers import Caller, CallersRun, waiting_caller, waiting_members
from deployments.logs import log_documented_errors_once
from deployments.metrics import StageMetrics
from deployments.options import stage_options
from deployments.replica import ComputeThread
from deployments.stream import Finished, PortraitJob
from deployments.style_cache import StyleCache
from serve_app.pipeline.layout import Layout, LayoutRun
from serve_app.pipeline.lora import style_adapters
from serve_app.pipeline.lora_validation import LoraLimits, LoraSummary, validate_lora
from serve_app.pipeline.models import load_models
from serve_app.pipeline.portrait import face_prior_ellipses, make_plan
from serve_app.pipeline.preprocess import Reference
from serve_app.pipeline.sampling import SamplingPlan, schedule_groups
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.settings import PortraitAppArgs
from serve_app.styles.store import StyleStore


@dataclass(frozen=True)
class PlannedLayout:
    """A request's sampling plan with its layout: what the blend sampler continues from."""

    plan: SamplingPlan
    layout: Layout


class LayoutGenerator:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        return stage_options(max_ongoing_requests=16, max_replicas=4)

    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        models = load_models(args.model_settings())
        self.pipe, self.faces = models.diffusion, models.faces
        self.metrics = StageMetrics(Stage.LAYOUT)
        self.styles = StyleCache(
            style_adapters(self.pipe), StyleStore(args.styles_dir), args.lora_cache_size, self.metrics, self.compute
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

    async def __call__(
        self, references: tuple[Reference, ...], job: PortraitJob
    ) -> AsyncIterator[Finished | PlannedLayout]:
        with waiting_caller() as caller:
            finished, planned = await self.generate_batch((references, job, caller))
        yield finished
        yield planned

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def generate_batch(
        self, requests: list[tuple[tuple[Reference, ...], PortraitJob, Caller]]
    ) -> list[tuple[Finished, PlannedLayout] | None]:
        """Each request's layout; None for a request whose caller left (nobody reads it)."""
        self.metrics.batch(len(requests))
        callers = [caller for _, _, caller in requests]
        timings: dict[str, float] = {}
        with stopwatch(timings, Stage.LAYOUT):
            async with self.styles.activated() as hit:
                plans = [make_plan(job.request, references) for references, job, _ in requests]
                priors = [face_prior_ellipses(job.request.face_priors, plan.size) for plan, (_, job, _) in
                          zip(plans, requests)]
                layouts: list[Layout | None] = [None] * len(plans)
                for group in schedule_groups(plans):
                    if not (members := waiting_members(group, callers)):
                        continue
                    run = CallersRun(
                        await self.compute.run(LayoutRun, self.pipe, [plans[i] for i in members]), members, callers
                    )
                    async for _ in run.steps(self.compute, self.metrics):
                        pass
                    if run.members:
                        found = await self.compute.run(run.run.layouts, self.faces, [priors[i] for i in run.members])
                        for index, layout in zip(run.members, found):
                            layouts[index] = layout
        finished = self.metrics.finished(timings[Stage.LAYOUT], "hit" if hit else "miss")
        return [
            None if layout is None else (finished, PlannedLayout(plan, layout)) for plan, layout in zip(plans, layouts)
        ]
