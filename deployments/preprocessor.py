"""Stage 1 deployment: decode, validate and analyse each person's reference face."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from deployments.logs import log_documented_errors_once
from deployments.metrics import StageMetrics
from deployments.options import stage_options
from deployments.replica import ComputeThread
from deployments.stream import Finished
from serve_app.pipeline.images import ImageLimits
from serve_app.pipeline.models import load_models
from serve_app.pipeline.preprocess import Reference, preprocess_people
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.settings import PortraitAppArgs


class Preprocessor:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        return stage_options(max_ongoing_requests=8, max_replicas=4)

    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.models = load_models(args.model_settings())
        self.models.build("faces", "face_parser", "face_restorer", "identity_encoder", "recognizer")
        self.limits = ImageLimits(max_bytes=args.max_image_bytes)
        self.metrics = StageMetrics(Stage.PREPROCESS)

    async def __call__(self, images: Sequence[bytes]) -> AsyncIterator[Finished | tuple[Reference, ...]]:
        timings: dict[str, float] = {}
        with stopwatch(timings, Stage.PREPROCESS):
            references = await self.compute.run(preprocess_people, self.models, images, self.limits)
        yield self.metrics.finished(timings[Stage.PREPROCESS])
        yield references
