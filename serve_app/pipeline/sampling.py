"""What the layout generator and the blend sampler share: the sampling plan, prompt and identity conditioning,
and the batched, identity-gated, classifier-free-guided UNet call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from serve_app.pipeline.models.identity_attention import IDENTITY_GATE

StepCallback = Callable[[int, int], None]
"""Called as ``on_step(done, total)`` after each denoising step of a stage."""

IDENTITY_FREE = 0.0
IDENTITY = 1.0


@dataclass(frozen=True)
class SamplingPlan:
    """Everything both diffusion stages need to agree on for one request."""

    prompt: str
    negative_prompt: str
    identity_embedding: torch.Tensor
    seeds: tuple[int, ...]
    size: int
    steps: int
    guidance_scale: float
    identity_weight: float
    t1: float

    @property
    def layout_steps(self) -> int:
        """Steps run prompt-only before t1; at least one, and at least one left for blending."""
        return min(self.steps - 1, max(1, round(self.t1 * self.steps)))


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings (negative, positive) and FaceID embeddings (zeros, identity), each with a leading 2."""

    text: torch.Tensor
    identity: torch.Tensor
    guidance_scale: float


def make_scheduler(pipe: StableDiffusionPipeline, steps: int) -> DDIMScheduler:
    """A request-local scheduler (set_timesteps mutates it, and replicas serve requests concurrently)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.inference_mode()
def encode_conditioning(pipe: StableDiffusionPipeline, plan: SamplingPlan) -> Conditioning:
    positive, negative = pipe.encode_prompt(
        plan.prompt,
        device=pipe.device,
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=plan.negative_prompt,
    )
    identity = plan.identity_embedding.reshape(1, 1, -1).to(pipe.device, pipe.unet.dtype)
    return Conditioning(
        text=torch.cat([negative, positive]),
        identity=torch.cat([torch.zeros_like(identity), identity]),
        guidance_scale=plan.guidance_scale,
    )


@torch.inference_mode()
def guided_noise(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    branch_gates: Sequence[float] = (IDENTITY_FREE,),
) -> torch.Tensor:
    """Classifier-free-guided noise for every candidate and every branch in ONE UNet call.

    ``latents`` is [N, C, h, w]. Rows are laid out branch-major, then (negative, positive), then candidate;
    each branch's identity attention is scaled by its gate (0: identity-free, 1: identity). Returns
    [len(branch_gates), N, C, h, w]. When every gate is 0 the identity attention is skipped altogether.
    """
    count, branches = latents.shape[0], len(branch_gates)
    model_input = latents.repeat(2 * branches, 1, 1, 1)
    text = conditioning.text.repeat_interleave(count, dim=0).repeat(branches, 1, 1)
    identity = conditioning.identity.repeat_interleave(count, dim=0).repeat(branches, 1, 1)
    gates = None
    if any(branch_gates):
        gates = torch.tensor(branch_gates, dtype=latents.dtype, device=latents.device).repeat_interleave(2 * count)
    noise = pipe.unet(
        model_input,
        timestep,
        encoder_hidden_states=text,
        added_cond_kwargs={"image_embeds": [identity]},
        cross_attention_kwargs={IDENTITY_GATE: gates},
    ).sample
    negative, positive = noise.view(branches, 2, count, *noise.shape[1:]).unbind(1)
    return negative + conditioning.guidance_scale * (positive - negative)


def initial_latents(pipe: StableDiffusionPipeline, seeds: Sequence[int], size: int) -> torch.Tensor:
    """Unit Gaussian latents, one generator per seed, so a candidate depends on its own seed only."""
    shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]).to(
        pipe.device, pipe.unet.dtype
    )


@torch.inference_mode()
def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list:
    """Latents → list of RGB uint8 arrays."""
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [image.permute(1, 2, 0).cpu().numpy() for image in images]
