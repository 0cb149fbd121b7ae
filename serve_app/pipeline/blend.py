"""Stage 3, the blend sampler: continue from x_t1 to 0, running the identity and identity-free branches (and
classifier-free guidance for both) in one batched UNet call per step, and fusing the next latents inside the
face mask:  x_{t−1} = λ·M ⊙ x^id_{t−1} + (1 − λ·M) ⊙ x^free_{t−1}."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from serve_app.pipeline.sampling import (
    IDENTITY,
    IDENTITY_FREE,
    SamplingPlan,
    StepCallback,
    decode_latents,
    encode_conditioning,
    guided_noise,
    make_scheduler,
)


def fuse_branches(
    free: torch.Tensor, identity: torch.Tensor, masks: torch.Tensor, identity_weight: float
) -> torch.Tensor:
    """λ·M ⊙ identity + (1 − λ·M) ⊙ free, with M [N, 1, h, w] broadcast over channels."""
    weight = identity_weight * masks
    return weight * identity + (1 - weight) * free


def blend_step(
    pipe: StableDiffusionPipeline,
    scheduler,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning,
    masks: torch.Tensor,
    identity_weight: float,
) -> torch.Tensor:
    """One denoising step for all candidates: one UNet call, one scheduler step over both branches, one fuse."""
    model_input = scheduler.scale_model_input(latents, timestep)
    noise = guided_noise(pipe, model_input, timestep, conditioning, branch_gates=(IDENTITY_FREE, IDENTITY))
    both = scheduler.step(noise.flatten(0, 1), timestep, latents.repeat(2, 1, 1, 1)).prev_sample
    free, identity = both.chunk(2)
    return fuse_branches(free, identity, masks, identity_weight)


@torch.inference_mode()
def blend_sample(
    pipe: StableDiffusionPipeline,
    plan: SamplingPlan,
    latents: torch.Tensor,
    masks: torch.Tensor,
    on_step: StepCallback | None = None,
) -> list[np.ndarray]:
    """Denoise the layout latents from t1 to 0 and decode them into N RGB candidates."""
    conditioning = encode_conditioning(pipe, plan)
    scheduler = make_scheduler(pipe, plan.steps)
    timesteps = scheduler.timesteps[plan.layout_steps :]
    for index, timestep in enumerate(timesteps):
        latents = blend_step(pipe, scheduler, latents, timestep, conditioning, masks, plan.identity_weight)
        if on_step is not None:
            on_step(index + 1, len(timesteps))
    return decode_latents(pipe, latents)
