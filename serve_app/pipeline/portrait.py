"""The five stages run in process, in order: the reference implementation the Serve graph distributes."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

import numpy as np
import torch

from serve_app.pipeline.blend import blend_sample
from serve_app.pipeline.fusion import FusionRanker, RankedPortrait, make_candidates
from serve_app.pipeline.images import ImageLimits
from serve_app.pipeline.layout import Layout, generate_layout
from serve_app.pipeline.lora import StyleAdapters
from serve_app.pipeline.masks import Ellipse, prior_ellipse
from serve_app.pipeline.models import Models
from serve_app.pipeline.preprocess import Reference, preprocess
from serve_app.pipeline.sampling import SamplingPlan
from serve_app.pipeline.timing import stopwatch
from serve_app.pipeline.upscale import upscale_portrait
from serve_app.schemas import PortraitOptions
from serve_app.styles import Style

STAGES = ("preprocess", "layout", "blend", "fusion", "upscale")

@dataclass(frozen=True)
class PortraitRun:
    style: Style
    seed: int
    plan: SamplingPlan
    reference: Reference
    layout: Layout
    portraits: list[RankedPortrait]
    timings: dict[str, float]


def resolve_seed(options: PortraitOptions) -> int:
    """The request's seed, or a random one leaving room for its candidates' seeds (seed + i)."""
    return secrets.randbelow(2**31 - options.num_candidates) if options.seed is None else options.seed


def make_plan(style: Style, options: PortraitOptions, reference: Reference, seed: int) -> SamplingPlan:
    defaults = style.manifest.defaults
    return SamplingPlan(
        prompt=style.manifest.prompt(options.subject),
        negative_prompt=style.manifest.negative_prompt,
        identity_embedding=torch.from_numpy(reference.identity_embedding),
        seeds=tuple(seed + i for i in range(options.num_candidates)),
        size=options.size or defaults.size,
        steps=options.steps or defaults.steps,
        guidance_scale=defaults.guidance_scale,
        identity_weight=defaults.identity_weight if options.identity_weight is None else options.identity_weight,
        t1=defaults.t1,
    )


def style_prior(style: Style, size: int) -> Ellipse:
    prior = style.manifest.prior_face_mask
    return prior_ellipse(size, (prior.center_x, prior.center_y), (prior.radius_x, prior.radius_y))


class PortraitPipeline:
    """preprocess → layout → blend → fusion → upscale, with a style's LoRA active for the diffusion stages."""

    def __init__(self, models: Models, limits: ImageLimits = ImageLimits()) -> None:
        self.models = models
        self.limits = limits
        self.adapters = StyleAdapters(models.diffusion)
        self.ranker = FusionRanker.of(models)

    def generate(self, image: bytes, style: Style, options: PortraitOptions) -> PortraitRun:
        seed = resolve_seed(options)
        timings: dict[str, float] = {}
        with stopwatch(timings, "preprocess"):
            reference = preprocess(self.models, image, self.limits)
        plan = make_plan(style, options, reference, seed)
        self.adapters.load(style.versioned_id, style.read_lora)
        with self.adapters.active(style.versioned_id, style.manifest.lora.scale):
            with stopwatch(timings, "layout"):
                layout = generate_layout(self.models.diffusion, self.models.faces, plan, style_prior(style, plan.size))
            with stopwatch(timings, "blend"):
                images = blend_sample(self.models.diffusion, plan, layout.latents, layout.masks)
        with stopwatch(timings, "fusion"):
            candidates = make_candidates(images, plan.seeds, layout.masks)
            ranked = self.ranker.rank(candidates, reference, options.top_k)
        with stopwatch(timings, "upscale"):
            portraits = [self._upscaled(portrait, options.upscale) for portrait in ranked]
        return PortraitRun(style, seed, plan, reference, layout, portraits, timings)

    def _upscaled(self, portrait: RankedPortrait, scale: int) -> RankedPortrait:
        image: np.ndarray = upscale_portrait(
            self.models.upscalers, self.models.face_restorer, portrait.image, portrait.face_points, scale
        )
        points = None if portrait.face_points is None else portrait.face_points * scale
        return dataclasses.replace(portrait, image=image, face_points=points)
