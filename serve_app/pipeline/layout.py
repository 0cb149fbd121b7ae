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
    BatchedRun,
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


class LayoutRun(BatchedRun):
    """The layout of several requests that share a schedule, one prompt-only step per ``step()`` call (see
    ``BatchedRun``); ``layouts()`` once every step is done. With ``steps`` and ``identity_gate`` given, the first
    ``steps`` steps of the schedule with one identity gate everywhere: a baseline's run (see ``baselines``)."""

    @torch.inference_mode()
    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        plans: Sequence[SamplingPlan],
        steps: int | None = None,
        identity_gate: float = IDENTITY_FREE,
    ) -> None:
        schedule = shared_schedule(plans)
        self.pipe, self.plans, self.identity_gate = pipe, list(plans), identity_gate
        self.conditioning = encode_conditioning(pipe, plans)
        self.scheduler = make_scheduler(pipe, schedule.steps)
        self.timesteps = self.scheduler.timesteps[: schedule.layout_steps if steps is None else steps]
        noise = torch.cat([initial_latents(pipe, plan.seeds, plan.size) for plan in plans])
        self.latents = noise * self.scheduler.init_noise_sigma
        self.done = 0

    @torch.inference_mode()
    def step(self) -> int:
        """1. Denoise the candidates one step, prompt-only (0: the identity attention skipped); returns how many
        steps are done."""
        timestep = self.timesteps[self.done]
        model_input = self.scheduler.scale_model_input(self.latents, timestep)
        noise = guided_noise(self.pipe, model_input, timestep, self.conditioning, branch_gates=(self.identity_gate,))
        self.latents = self.scheduler.step(noise[0], timestep, self.latents).prev_sample
        self.done += 1
        return self.done

    @torch.inference_mode()
    def layouts(self, faces: FaceAnalyzer, priors: Sequence[Ellipse]) -> list[Layout]:
        """Once at t1, every plan's layout; ``priors`` holds each plan's fallback ellipse."""
        # 2. At t1, predict the noise with identity and take the one-step estimate x̂0
        t1 = self.scheduler.timesteps[self.total]
        estimate = identity_estimate(self.pipe, self.scheduler, self.latents, t1, self.conditioning)
        # 3. Decode x̂0 and turn each candidate's face into its soft mask (4. the prior ellipse where it has none)
        previews = decode_latents(self.pipe, estimate)
        return [
            plan_layout(faces, prior, plan_latents, plan_previews)
            for prior, plan_latents, plan_previews in zip(
                priors, split_per_plan(self.latents, self.plans), split_per_plan(previews, self.plans)
            )
        ]


def generate_layouts(
    pipe: StableDiffusionPipeline,
    faces: FaceAnalyzer,
    plans: Sequence[SamplingPlan],
    priors: Sequence[Ellipse],
    on_step: StepCallback | None = None,
) -> list[Layout]:
    """Layouts for several requests sharing a schedule, their candidates in one UNet batch."""
    run = LayoutRun(pipe, plans)
    while run.done < run.total:
        done = run.step()
        if on_step is not None:
            on_step(done, run.total)
    return run.layouts(faces, priors)


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
