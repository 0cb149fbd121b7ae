"""The response document of a portrait request (``PortraitResponse``), from what the stage graph returned: the
synchronous call's body, and an asynchronous job's result."""

from __future__ import annotations

import base64

from deployments.stream import PortraitJob
from serve_app.graph import GraphResult
from serve_app.schemas import GeneratedPortrait, PortraitResponse


def portrait_response(job: PortraitJob, result: GraphResult) -> PortraitResponse:
    return PortraitResponse(
        request_id=job.request_id,
        style=job.style,
        seed=job.request.seeds[0],
        images=[
            GeneratedPortrait(
                image_base64=base64_text(p.png),
                layout_mask_base64=None if p.mask_png is None else base64_text(p.mask_png),
                layout_masks_base64=None if p.person_mask_pngs is None else list(map(base64_text, p.person_mask_pngs)),
                **p.info.model_dump(),
            )
            for p in result.portraits
        ],
        timings=result.timings,
        lora_cache=result.lora_cache,
    )


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
