"""Stage 3 deployment: the blend sampler, batched across requests of the same style, streaming step progress.

A call streams one ``Step`` per denoising step, then ``Finished``, then the request's candidates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.callers import Caller, CallersRun, waiting_caller, waiting_members
from deployments.layout_generator import PlannedLayout
from deployments.logs import log_documented_errors_once
from deployments.metrics import StageMetrics
from deployments.options import stage_options
from deployments.replica import ComputeThread
from deployments.stream import Finished, Step
from deployments.style_cache import StyleCache
from serve_app.pipeline.blend import BlendRun
from serve_app.pipeline.fusion import Candidate, make_candidates
from serve_app.pipeline.lora import style_adapters
from serve_app.pipeline.models import load_models
from serve_app.pipeline.sampling import schedule_groups
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.settings import PortraitAppArgs
from serve_app.styles.store import StyleStore


class BlendSampler:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        return stage_options(max_ongoing_requests=16, max_replicas=4)

    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.pipe = load_models(args.model_settings()).diffusion
        self.metrics = StageMetrics(Stage.BLEND)
        self.styles = StyleCache(
            style_adapters(self.pipe), StyleStore(args.styles_dir), args.lora_cache_size, self.metrics, self.compute
        )
        self.sample_batch.set_max_batch_size(args.max_batch_size)
        self.sample_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    async def __call__(self, planned: PlannedLayout) -> AsyncIterator[Step | Finished | list[Candidate]]:
        # A batched generator cannot be streamed to a handle directly: this plain generator wraps it.
        with waiting_caller() as caller:
            async for item in self.sample_batch((planned, caller)):
                if item is not None:
                    yield item

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.02)
    async def sample_batch(self, requests: list[tuple[PlannedLayout, Caller]]) -> AsyncIterator[list]:
        """Yields one item per request each time: its step, or None while another schedule group runs (or once its
        caller left); then every request's ``Finished``, then its candidates (none for a caller who left)."""
        self.metrics.batch(len(requests))
        layouts = [planned.layout for planned, _ in requests]
        plans = [planned.plan for planned, _ in requests]
        callers = [caller for _, caller in requests]
        candidates: list[list[Candidate]] = [[] for _ in requests]
        timings: dict[str, float] = {}
        with stopwatch(timings, Stage.BLEND):
            async with self.styles.activated() as hit:
                for group in schedule_groups(plans):
                    if not (members := waiting_members(group, callers)):
                        continue
                    run = CallersRun(
                        await self.compute.run(
                            BlendRun,
                            self.pipe,
                            [plans[i] for i in members],
                            [layouts[i].latents for i in members],
                            [layouts[i].masks for i in members],
                        ),
                        members,
                        callers,
                    )
                    async for done in run.steps(self.compute, self.metrics):
                        step = Step(Stage.BLEND, done, run.run.total)
                        yield [step if i in run.members else None for i in range(len(requests))]
                    if run.members:
                        for index, images in zip(run.members, await self.compute.run(run.run.images)):
                            candidates[index] = make_candidates(images, plans[index].seeds, layouts[index].masks)
        yield [self.metrics.finished(timings[Stage.BLEND], "hit" if hit else "miss")] * len(requests)
        yield candidates
