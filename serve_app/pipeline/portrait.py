"""The five stages run in process, in order: the reference implementation the Serve graph distributes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
from serve_app.pipeline.preprocess import Reference, preprocess
from serve_app.pipeline.request import FacePrior, PortraitRequest
from serve_app.pipeline.sampling import SamplingPlan
from serve_app.pipeline.stages import Stage
from serve_app.pipeline.timing import stopwatch
from serve_app.pipeline.upscale import upscale_portrait


@dataclass(frozen=True)
class PortraitRun:
    request: PortraitRequest
    plan: SamplingPlan
    reference: Reference
    layout: Layout
    portraits: list[RankedPortrait]
    timings: dict[str, float]


def make_plan(request: PortraitRequest, reference: Reference) -> SamplingPlan:
    """What both diffusion stages sample: the request's prompts and sampling settings, conditioned on the
    reference's identity."""
    return SamplingPlan(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        identity_embeddings=(torch.from_numpy(reference.identity_embedding),),
        seeds=request.seeds,
        size=request.size,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        identity_weight=request.identity_weight,
        t1=request.t1,
        identity_negative=optional_tensor(reference.identity_negative),
    )


def optional_tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(array)


def face_prior_ellipse(prior: FacePrior, size: int) -> Ellipse:
    return prior_ellipse(size, prior.center, prior.radii)


class PortraitPipeline:
    """preprocess → layout → blend → fusion → upscale, with the request's style LoRA active for the diffusion
    stages."""

    def __init__(self, models: Models, limits: ImageLimits = ImageLimits()) -> None:
        self.models = models
        self.limits = limits
        self.adapters = style_adapters(models.diffusion)
        self.ranker = FusionRanker.of(models)

    def generate(self, image: bytes, request: PortraitRequest, read_lora: Callable[[], bytes]) -> PortraitRun:
        """``read_lora`` returns the style LoRA's safetensors bytes; it is called once per LoRA key."""
        timings: dict[str, float] = {}
        # 1. Preprocess: decode and check the image, find the face, analyse and embed it
        with stopwatch(timings, Stage.PREPROCESS):
            reference = preprocess(self.models, image, self.limits)
        plan = make_plan(request, reference)
        # 2. Activate the style for both diffusion stages
        self.adapters.load(request.lora.key, read_lora)
        with self.adapters.active(request.lora.key, request.lora.scale):
            # 3. Layout: prompt-only to t1, then a face mask per candidate
            with stopwatch(timings, Stage.LAYOUT):
                prior = face_prior_ellipse(request.face_prior, plan.size)
                layout = generate_layout(self.models.diffusion, self.models.faces, plan, prior)
            # 4. Blend: t1 to 0 with identity inside the masks
            with stopwatch(timings, Stage.BLEND):
                images = blend_sample(self.models.diffusion, plan, layout.latents, layout.masks)
        # 5. Fuse the reference face, check, score and keep the top K
        with stopwatch(timings, Stage.FUSION):
            candidates = make_candidates(images, plan.seeds, layout.masks)
            ranked = self.ranker.rank(candidates, reference, request.top_k)
        # 6. Upscale and restore the kept portraits
        with stopwatch(timings, Stage.UPSCALE):
            portraits = [self._upscaled(portrait, request.upscale) for portrait in ranked]
        return PortraitRun(request, plan, reference, layout, portraits, timings)

    def _upscaled(self, portrait: RankedPortrait, scale: int) -> RankedPortrait:
        image: np.ndarray = upscale_portrait(
            self.models.upscalers, self.models.face_restorer, portrait.image, portrait.face_points, scale
        )
        points = None if portrait.face_points is None else portrait.face_points * scale
        return dataclasses.replace(portrait, image=image, face_points=points)
