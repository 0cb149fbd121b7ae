"""Stage 5 deployment: super-resolution and face restoration, then PNG encoding (so the ingress only relays)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from deployments.logs import log_documented_errors_once
from deployments.metrics import StageMetrics
from deployments.options import stage_options
from deployments.replica import ComputeThread
from deployments.stream import EncodedPortrait, Finished, PortraitJob
from serve_app.pipeline.fusion import RankedPortrait
from serve_app.pipeline.images import encode_png
from serve_app.pipeline.masks import mask_image
from serve_app.pipeline.models import load_models
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.pipeline.upscale import upscale_portrait
from serve_app.schemas import PortraitImage
from serve_app.settings import PortraitAppArgs


class Upscaler:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        return stage_options(max_ongoing_requests=8, max_replicas=4)

    def __init__(self, args: PortraitAppArgs) -> None:
        log_documented_errors_once()
        self.compute = ComputeThread(args)
        self.models = load_models(args.model_settings())
        self.models.build("upscalers", "face_restorer")
        self.metrics = StageMetrics(Stage.UPSCALE)

    def _encode(self, portrait: RankedPortrait, scale: int, with_mask: bool) -> EncodedPortrait:
        image = upscale_portrait(
            self.models.upscalers, self.models.face_restorer, portrait.image, portrait.faces_points, scale
        )
        info = PortraitImage.of(portrait)
        if not with_mask:
            return EncodedPortrait(encode_png(image), info)
        union, *people = (encode_png(mask_image(m, image.shape[0])) for m in (portrait.masks.max(0), *portrait.masks))
        return EncodedPortrait(encode_png(image), info, union, tuple(people))

    async def __call__(
        self, ranked: list[RankedPortrait], job: PortraitJob
    ) -> AsyncIterator[Finished | list[EncodedPortrait]]:
        timings: dict[str, float] = {}
        with stopwatch(timings, Stage.UPSCALE):
            # One portrait per call on the compute thread: a cancelled request stops between portraits.
            encoded = [
                await self.compute.run(self._encode, portrait, job.request.upscale, job.return_masks)
                for portrait in ranked
            ]
        yield self.metrics.finished(timings[Stage.UPSCALE])
        yield encoded
