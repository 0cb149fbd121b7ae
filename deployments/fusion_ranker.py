"""Stage 4 deployment: fuse each person's reference face into every candidate, score, keep the top K."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from deployments.logs import log_documented_errors_once
from deployments.metrics import StageMetrics
from deployments.options import stage_options
from deployments.replica import ComputeThread
from deployments.stream import Finished, PortraitJob
from serve_app.pipeline.fusion import Candidate, RankedPortrait
from serve_app.pipeline.fusion import FusionRanker as Ranker
from serve_app.pipeline.models import load_models
from serve_app.pipeline.preprocess import Reference
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.settings import PortraitAppArgs


class FusionRanker:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        return stage_options(max_ongoing_requests=8, max_replicas=4)

    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.ranker = Ranker.of(load_models(args.model_settings()))
        self.metrics = StageMetrics(Stage.FUSION)

    async def __call__(
        self, candidates: list[Candidate], references: tuple[Reference, ...], job: PortraitJob
    ) -> AsyncIterator[Finished | list[RankedPortrait]]:
        timings: dict[str, float] = {}
        with stopwatch(timings, Stage.FUSION):
            ranked = await self.compute.run(self.ranker.rank, candidates, references, job.request.top_k)
        self.metrics.images(portrait.rejected for portrait in ranked)
        yield self.metrics.finished(timings[Stage.FUSION])
        yield ranked
