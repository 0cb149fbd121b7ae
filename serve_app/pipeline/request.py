"""What one portrait request asks of the pipeline, in the pipeline's own terms. The serving side builds it from the
API options and the style manifest (``serve_app.portrait_request``); nothing here knows either."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PEOPLE = 4  # reference images of one portrait, one per person


@dataclass(frozen=True)
class StyleLora:
    """The style LoRA to activate: ``key`` names one LoRA file for good (the versioned style id), so it is the
    adapter's name and its cache key; ``scale`` is the adapter weight."""

    key: str
    scale: float


@dataclass(frozen=True)
class FacePrior:
    """Where the style expects a face when none is found: an ellipse in fractions of the image side."""

    center: tuple[float, float]
    radii: tuple[float, float]


@dataclass(frozen=True)
class PortraitRequest:
    """Every default resolved: the prompts, the LoRA, one seed per candidate, and how to sample and finish.
    ``face_priors``: one per person, left to right (the style's group prior for a group)."""

    prompt: str
    negative_prompt: str
    lora: StyleLora
    seeds: tuple[int, ...]
    top_k: int
    size: int
    steps: int
    guidance_scale: float
    identity_weight: float
    t1: float
    upscale: int
    face_priors: tuple[FacePrior, ...]
