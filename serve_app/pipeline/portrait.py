"""The five stages run in process, in order: the reference implementation the Serve graph distributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from serve_app.pipeline.blend import blend_sample
from serve_app.pipeline.fusion import FusionRanker, RankedPortrait, make_candidates
from serve_app.pipeline.images import ImageLimits
from serve_app.pipeline.layout import Layout, generate_layout
from serve_app.pipeline.lora import style_adapters
from serve_app.pipeline.masks import Ellipse, prior_ellipse
from serve_app.pipeline.models import Models
from serve_app.pipeline.preprocess import Reference, preprocess_people
from serve_app.pipeline.request import FacePrior, PortraitRequest
from serve_app.pipeline.sampling import SamplingPlan
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.pipeline.upscale import upscale_portrait


@dataclass(frozen=True)
class PortraitRun:
    request: PortraitRequest
    plan: SamplingPlan
    references: tuple[Reference, ...]
    layout: Layout
    portraits: list[RankedPortrait]
    timings: dict[str, float]


def make_plan(request: PortraitRequest, references: Sequence[Reference]) -> SamplingPlan:
    """What both diffusion stages sample: the request's prompts and sampling settings, conditioned on each
    person's identity (left to right)."""
    return SamplingPlan(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        identity_embeddings=tuple(torch.from_numpy(reference.identity_embedding) for reference in references),
        seeds=request.seeds,
        size=request.size,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        identity_weight=request.identity_weight,
        t1=request.t1,
        identity_negative=optional_tensor(references[0].identity_negative),
    )


def optional_tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(array)


def face_prior_ellipses(priors: Sequence[FacePrior], size: int) -> tuple[Ellipse, ...]:
    """The request's prior ellipse per person, in pixels of a ``size``² image."""
    return tuple(prior_ellipse(size, prior.center, prior.radii) for prior in priors)


class PortraitPipeline:
    """preprocess → layout → blend → fusion → upscale, with the request's style LoRA active for the diffusion
    stages."""

    def __init__(self, models: Models, limits: ImageLimits = ImageLimits()) -> None:
        self.models = models
        self.limits = limits
        self.adapters = style_adapters(models.diffusion)
        self.ranker = FusionRanker.of(models)

    def generate(
        self, images: Sequence[bytes], request: PortraitRequest, read_lora: Callable[[], bytes]
    ) -> PortraitRun:
        """``images``: each person's reference, left to right; ``read_lora`` returns the style LoRA's safetensors
        bytes, and is called once per LoRA key."""
        timings: dict[str, float] = {}
        # 1. Preprocess: decode and check each image, find the face, analyse and embed it
        with stopwatch(timings, Stage.PREPROCESS):
            references = preprocess_people(self.models, images, self.limits)
        plan = make_plan(request, references)
        # 2. Activate the style for both diffusion stages
        self.adapters.load(request.lora.key, read_lora)
        with self.adapters.active(request.lora.key, request.lora.scale):
            # 3. Layout: prompt-only to t1, then a face mask per person and candidate
            with stopwatch(timings, Stage.LAYOUT):
                priors = face_prior_ellipses(request.face_priors, plan.size)
                layout = generate_layout(self.models.diffusion, self.models.faces, plan, priors)
            # 4. Blend: t1 to 0 with each identity inside its masks
            with stopwatch(timings, Stage.BLEND):
                portraits = blend_sample(self.models.diffusion, plan, layout.latents, layout.masks)
        # 5. Fuse each person's reference face, check, score and keep the top K
        with stopwatch(timings, Stage.FUSION):
            candidates = make_candidates(portraits, plan.seeds, layout.masks)
            ranked = self.ranker.rank(candidates, references, request.top_k)
        # 6. Upscale and restore the kept portraits
        with stopwatch(timings, Stage.UPSCALE):
            upscaled = [self._upscaled(portrait, request.upscale) for portrait in ranked]
        return PortraitRun(request, plan, references, layout, upscaled, timings)

    def _upscaled(self, portrait: RankedPortrait, scale: int) -> RankedPortrait:
        image: np.ndarray = upscale_portrait(
            self.models.upscalers, self.models.face_restorer, portrait.image, portrait.faces_points, scale
        )
        return dataclasses.replace(portrait, image=image, people=tuple(p.scaled(scale) for p in portrait.people))
