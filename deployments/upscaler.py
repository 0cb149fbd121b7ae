"""Stage 5 deployment: super-resolution and face restoration, then PNG encoding (so the ingress only relays)."""

from __future__ import annotations

from dataclasses import dataclass

from deployments.metrics import StageMetrics
from deployments.logs import log_documented_errors_once
from deployments.replica import ComputeThread
from deployments.staged import PortraitJob, Staged
from serve_app.pipeline.fusion import RankedPortrait
from serve_app.pipeline.images import encode_png
from serve_app.pipeline.models import load_models
from serve_app.pipeline.timing import stopwatch
from serve_app.pipeline.upscale import upscale_portrait
from serve_app.schemas import PortraitAppArgs, PortraitImage

STAGE = "upscale"


@dataclass(frozen=True)
class EncodedPortrait:
    png: bytes
    info: PortraitImage


class Upscaler:
    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.models = load_models(args.model_settings())
        self.models.build("upscalers", "face_restorer")
        self.metrics = StageMetrics(STAGE)

    def _encode(self, ranked: list[RankedPortrait], scale: int) -> list[EncodedPortrait]:
        return [
            EncodedPortrait(
                encode_png(
                    upscale_portrait(self.models.upscalers, self.models.face_restorer, p.image, p.face_points, scale)
                ),
                PortraitImage.of(p),
            )
            for p in ranked
        ]

    async def __call__(self, ranked: Staged[list[RankedPortrait]], job: PortraitJob) -> Staged[list[EncodedPortrait]]:
        timings = dict(ranked.timings)
        with stopwatch(timings, STAGE):
            encoded = await self.compute.run(self._encode, ranked.value, job.options.upscale)
        self.metrics.latency(timings[STAGE])
        return Staged(encoded, timings)
