"""Stage 2, the layout-mask generator: the style alone decides the composition; identity only tells where the
face will be.

1. denoise N candidates prompt-only from T to t1 (the identity attention is skipped);
2. at t1 predict the noise with identity and take the DDIM one-step estimate x̂0;
3. decode x̂0, detect the face, and turn it into a soft face-region mask at latent resolution;
4. without a face, fall back to the style's prior ellipse — never fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from serve_app.pipeline.faces import FaceAnalyzer
from serve_app.pipeline.masks import Ellipse, face_ellipse, soft_ellipse_mask, to_latent_resolution
from serve_app.pipeline.sampling import (
    IDENTITY,
    IDENTITY_FREE,
    Conditioning,
    SamplingPlan,
    StepCallback,
    decode_latents,
    encode_conditioning,
    guided_noise,
    initial_latents,
    make_scheduler,
    shared_schedule,
    split_per_plan,
)

MASK_FROM_FACE = "detected"
MASK_FROM_PRIOR = "prior"


@dataclass(frozen=True)
class Layout:
    """Per candidate: the latent at t1 [N, C, h, w], its soft face mask [N, 1, h, w], where the mask came from,
    and the decoded x̂0 preview."""

    latents: torch.Tensor
    masks: torch.Tensor
    mask_sources: tuple[str, ...]
    previews: tuple[np.ndarray, ...]


def predicted_original(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """DDIM's one-step estimate x̂0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t."""
    alpha_bar = scheduler.alphas_cumprod[int(timestep)].to(latents.dtype)
    return (latents - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()


def face_region_mask(
    faces: FaceAnalyzer, preview: np.ndarray, prior: Ellipse, latent_side: int
) -> tuple[np.ndarray, str]:
    """The soft face mask [h, w] of one decoded x̂0 and where it came from: its largest face, else the prior."""
    found = faces.detect_generated(preview)
    ellipse, source = (face_ellipse(found[0]), MASK_FROM_FACE) if found else (prior, MASK_FROM_PRIOR)
    return to_latent_resolution(soft_ellipse_mask(preview.shape[0], ellipse), latent_side), source


@torch.inference_mode()
def generate_layouts(
    pipe: StableDiffusionPipeline,
    faces: FaceAnalyzer,
    plans: Sequence[SamplingPlan],
    priors: Sequence[Ellipse],
    on_step: StepCallback | None = None,
) -> list[Layout]:
    """Layouts for several requests sharing a schedule, their candidates in one UNet batch."""
    # 1. Denoise the candidates prompt-only from T to t1
    schedule = shared_schedule(plans)
    conditioning = encode_conditioning(pipe, plans)
    scheduler = make_scheduler(pipe, schedule.steps)
    latents = denoise(pipe, scheduler, conditioning, plans, schedule.layout_steps, on_step=on_step)
    # 2. At t1, predict the noise with identity and take the one-step estimate x̂0
    t1 = scheduler.timesteps[schedule.layout_steps]
    estimate = identity_estimate(pipe, scheduler, latents, t1, conditioning)
    # 3. Decode x̂0 and turn each candidate's face into its soft mask (4. the prior ellipse where it has none)
    previews = decode_latents(pipe, estimate)
    return [
        plan_layout(faces, prior, plan_latents, plan_previews)
        for prior, plan_latents, plan_previews in zip(
            priors, split_per_plan(latents, plans), split_per_plan(previews, plans)
        )
    ]


def denoise(
    pipe: StableDiffusionPipeline,
    scheduler,
    conditioning: Conditioning,
    plans: Sequence[SamplingPlan],
    steps: int,
    identity_gate: float = IDENTITY_FREE,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Every candidate's seeded noise denoised for the first ``steps`` steps with one identity gate everywhere:
    the layout's prompt-only steps (0: the identity attention skipped), or a baseline's (see ``baselines``)."""
    latents = torch.cat([initial_latents(pipe, plan.seeds, plan.size) for plan in plans]) * scheduler.init_noise_sigma
    for index, timestep in enumerate(scheduler.timesteps[:steps]):
        model_input = scheduler.scale_model_input(latents, timestep)
        noise = guided_noise(pipe, model_input, timestep, conditioning, branch_gates=(identity_gate,))[0]
        latents = scheduler.step(noise, timestep, latents).prev_sample
        if on_step is not None:
            on_step(index + 1, steps)
    return latents


def identity_estimate(
    pipe: StableDiffusionPipeline, scheduler, latents: torch.Tensor, t1: torch.Tensor, conditioning: Conditioning
) -> torch.Tensor:
    """x̂0 from the noise predicted at t1 with identity."""
    noise = guided_noise(pipe, scheduler.scale_model_input(latents, t1), t1, conditioning, branch_gates=(IDENTITY,))[0]
    return predicted_original(scheduler, latents, noise, t1)


def plan_layout(
    faces: FaceAnalyzer, prior: Ellipse, latents: Sequence[torch.Tensor], previews: Sequence[np.ndarray]
) -> Layout:
    """One request's layout from its candidates' latents [C, h, w] and decoded previews."""
    latent = latents[0]
    masks, sources = zip(*(face_region_mask(faces, preview, prior, latent.shape[-1]) for preview in previews))
    return Layout(
        latents=torch.stack(list(latents)),
        masks=torch.from_numpy(np.stack(masks))[:, None].to(latent.device, latent.dtype),
        mask_sources=sources,
        previews=tuple(previews),
    )


def generate_layout(
    pipe: StableDiffusionPipeline,
    faces: FaceAnalyzer,
    plan: SamplingPlan,
    prior: Ellipse,
    on_step: StepCallback | None = None,
) -> Layout:
    return generate_layouts(pipe, faces, [plan], [prior], on_step)[0]
