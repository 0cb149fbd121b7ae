"""What a stage call streams back to the ingress: progress events, then ``Finished``, then the stage's result.

The ingress reads the events (small) and hands the result's object ref, unread, to the next stage, so results go
replica to replica; a streamed item is owned by the caller, so a result stays readable when the replica that made
it is removed. Only the last stage's result is read by the ingress: it is the response.
"""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.pipeline.request import PortraitRequest
from serve_app.schemas import PortraitImage


@dataclass(frozen=True)
class PortraitJob:
    """One request as every stage sees it: its id, the versioned style id, and the pipeline's request."""

    request_id: str
    style: str
    request: PortraitRequest
    return_masks: bool = False


@dataclass(frozen=True)
class Step:
    """A denoising step of the blend sampler is done."""

    stage: str
    step: int
    total: int


@dataclass(frozen=True)
class Finished:
    """The stage is done; its result is the next item. ``lora_cache`` ('hit' or 'miss') for a diffusion stage."""

    stage: str
    ms: float
    lora_cache: str | None = None


@dataclass(frozen=True)
class EncodedPortrait:
    """One portrait of the last stage's result: the PNG, what the response says about it, and, when the request
    asked for masks, its layout masks as PNGs (all people's in one, then each person's)."""

    png: bytes
    info: PortraitImage
    mask_png: bytes | None = None
    person_mask_pngs: tuple[bytes, ...] | None = None
