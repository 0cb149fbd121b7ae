"""Stage 1 deployment: decode, validate and analyse the reference face."""

from __future__ import annotations

from deployments.metrics import StageMetrics
from deployments.logs import log_documented_errors_once
from deployments.replica import ComputeThread
from deployments.staged import Staged
from serve_app.pipeline.images import ImageLimits
from serve_app.pipeline.models import load_models
from serve_app.pipeline.preprocess import Reference, preprocess
from serve_app.pipeline.timing import stopwatch
from serve_app.schemas import PortraitAppArgs

STAGE = "preprocess"


class Preprocessor:
    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.models = load_models(args.model_settings())
        self.models.build("faces", "face_parser", "face_restorer", "identity_recognizer", "recognizer")
        self.limits = ImageLimits(max_bytes=args.max_image_bytes)
        self.metrics = StageMetrics(STAGE)

    async def __call__(self, image: bytes) -> Staged[Reference]:
        timings: dict[str, float] = {}
        with stopwatch(timings, STAGE):
            reference = await self.compute.run(preprocess, self.models, image, self.limits)
        self.metrics.latency(timings[STAGE])
        return Staged(reference, timings)
