"""Stage 4 deployment: fuse the reference face into every candidate, score, keep the top K."""

from __future__ import annotations

from deployments.metrics import StageMetrics
from deployments.logs import log_documented_errors_once
from deployments.replica import ComputeThread
from deployments.staged import PortraitJob, Staged, merged_timings
from serve_app.pipeline.fusion import Candidate, RankedPortrait
from serve_app.pipeline.fusion import FusionRanker as Ranker
from serve_app.pipeline.models import load_models
from serve_app.pipeline.preprocess import Reference
from serve_app.pipeline.timing import stopwatch
from serve_app.schemas import PortraitAppArgs

STAGE = "fusion"


class FusionRanker:
    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.ranker = Ranker.of(load_models(args.model_settings()))
        self.metrics = StageMetrics(STAGE)

    async def __call__(
        self, candidates: Staged[list[Candidate]], reference: Staged[Reference], job: PortraitJob
    ) -> Staged[list[RankedPortrait]]:
        timings = merged_timings(reference, candidates)
        with stopwatch(timings, STAGE):
            ranked = await self.compute.run(self.ranker.rank, candidates.value, reference.value, job.options.top_k)
        self.metrics.latency(timings[STAGE])
        self.metrics.images(portrait.rejected for portrait in ranked)
        return Staged(ranked, timings)
