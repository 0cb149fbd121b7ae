"""What the layout generator and the blend sampler share: the sampling plan, per-candidate prompt and identity
conditioning, and the batched, identity-gated, classifier-free-guided UNet call.

Candidates of several requests can share one UNet batch when their plans share a schedule (size, steps, t1);
everything else (prompt, identity, guidance, λ, seed) is per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from serve_app.pipeline.models.identity_attention import IDENTITY_GATE

StepCallback = Callable[[int, int], None]
"""Called as ``on_step(done, total)`` after each denoising step of a stage."""

IDENTITY_FREE = 0.0
IDENTITY = 1.0


@dataclass(frozen=True)
class SamplingPlan:
    """Everything both diffusion stages need to agree on for one request. ``identity_embeddings`` holds, per person
    (left to right; one for a single portrait), what the IP-Adapter's image projection takes for one image
    (FaceID: a [512] face embedding; Plus-face: the CLIP encoder's [tokens, D] hidden states);
    ``identity_negative`` is their classifier-free-guidance counterpart (None: zeros, as FaceID was trained;
    Plus-face: the encoding of a black image)."""

    prompt: str
    negative_prompt: str
    identity_embeddings: tuple[torch.Tensor, ...]
    seeds: tuple[int, ...]
    size: int
    steps: int
    guidance_scale: float
    identity_weight: float
    t1: float
    identity_negative: torch.Tensor | None = None

    @property
    def layout_steps(self) -> int:
        """Steps run prompt-only before t1; at least one, and at least one left for blending."""
        return min(self.steps - 1, max(1, round(self.t1 * self.steps)))

    @property
    def people(self) -> int:
        return len(self.identity_embeddings)

    @property
    def schedule(self) -> tuple[int, int, int, int]:
        """Plans with equal schedules can be sampled in one batch (the people count sets the branches)."""
        return self.size, self.steps, self.layout_steps, self.people


def schedule_groups(plans: Sequence[SamplingPlan]) -> list[list[int]]:
    """Indices of ``plans`` grouped by schedule, in first-seen order."""
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for index, plan in enumerate(plans):
        groups.setdefault(plan.schedule, []).append(index)
    return list(groups.values())


def shared_schedule(plans: Sequence[SamplingPlan]) -> SamplingPlan:
    """The first plan, after checking that every plan shares its schedule."""
    if not plans:
        raise ValueError("no plans to sample")
    if len({plan.schedule for plan in plans}) != 1:
        raise ValueError(
            "plans sampled together must share size, steps, t1 and people; group them with schedule_groups"
        )
    return plans[0]


@dataclass(frozen=True)
class Conditioning:
    """Per candidate (leading dimension M): negative and positive text embeddings [M, L, C], the negative identity
    embedding [M, 1, *E] (E the adapter's embedding shape), each person's identity embedding [M, P, *E] and
    guidance scales [M]. ``identities[:, i:i + 1]`` is person i as the UNet takes it (one image per row)."""

    negative: torch.Tensor
    positive: torch.Tensor
    identity_negative: torch.Tensor
    identities: torch.Tensor
    guidance: torch.Tensor

    def candidates(self, rows: slice | torch.Tensor) -> Conditioning:
        """The conditioning of the candidates in ``rows`` (a slice, or a tensor of row indices)."""
        return Conditioning(*(tensor[rows] for tensor in vars(self).values()))


def make_scheduler(pipe: StableDiffusionPipeline, steps: int) -> DDIMScheduler:
    """A request-local scheduler (set_timesteps mutates it, and replicas serve requests concurrently)."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.inference_mode()
def encode_conditioning(pipe: StableDiffusionPipeline, plans: Sequence[SamplingPlan]) -> Conditioning:
    parts = []
    for plan in plans:
        positive, negative = pipe.encode_prompt(
            plan.prompt,
            device=pipe.device,
            num_images_per_prompt=len(plan.seeds),
            do_classifier_free_guidance=True,
            negative_prompt=plan.negative_prompt,
        )
        identities = torch.stack(plan.identity_embeddings)
        identity_negative = (
            torch.zeros_like(identities[0]) if plan.identity_negative is None else plan.identity_negative
        )[None]
        per_candidate = [
            embeddings[None].to(pipe.device, pipe.unet.dtype).expand(len(plan.seeds), *embeddings.shape)
            for embeddings in (identity_negative, identities)
        ]
        guidance = torch.full((len(plan.seeds),), plan.guidance_scale, device=pipe.device, dtype=pipe.unet.dtype)
        parts.append((negative, positive, *per_candidate, guidance))
    return Conditioning(*(torch.cat(tensors) for tensors in zip(*parts)))


@torch.inference_mode()
def guided_noise(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    branch_gates: Sequence[float] = (IDENTITY_FREE,),
    branch_people: Sequence[int] | None = None,
) -> torch.Tensor:
    """Classifier-free-guided noise for every candidate and every branch in ONE UNet call.

    ``latents`` is [M, C, h, w]. Each branch's identity attention is scaled by its gate (0: identity-free, 1:
    identity) and carries the identity of its person in ``branch_people`` (default: the first person in every
    branch). A branch's negative half depends on its gate alone (the negative identity is everyone's), so branches
    with one gate share one: rows are laid out branch by branch, a branch's negative (unless an earlier branch's
    serves) then its positive, each over every candidate; a group of P people costs P + 1 identity halves, not 2P.
    Returns [len(branch_gates), M, C, h, w]. When every gate is 0 the identity attention is skipped altogether.
    """
    count = latents.shape[0]
    people = branch_people or [0] * len(branch_gates)
    halves: list[tuple[int | None, float]] = []  # (person, or None for a negative half; gate)
    negative_of: dict[float, int] = {}
    positive_of: list[int] = []
    for person, gate in zip(people, branch_gates):
        if gate not in negative_of:
            negative_of[gate] = len(halves)
            halves.append((None, gate))
        positive_of.append(len(halves))
        halves.append((person, gate))
    text = torch.cat([conditioning.negative if p is None else conditioning.positive for p, _ in halves])
    identities = conditioning.identities
    identity = torch.cat([conditioning.identity_negative if p is None else identities[:, p : p + 1] for p, _ in halves])
    gates = None
    if any(branch_gates):
        gates = torch.tensor([g for _, g in halves], dtype=latents.dtype, device=latents.device)
        gates = gates.repeat_interleave(count)
    noise = pipe.unet(
        latents.repeat(len(halves), 1, 1, 1),
        timestep,
        encoder_hidden_states=text,
        added_cond_kwargs={"image_embeds": [identity]},
        cross_attention_kwargs={IDENTITY_GATE: gates},
    ).sample.view(len(halves), count, *latents.shape[1:])
    negative = noise[[negative_of[gate] for gate in branch_gates]]
    positive = noise[positive_of]
    return negative + conditioning.guidance[:, None, None, None] * (positive - negative)


def initial_latents(pipe: StableDiffusionPipeline, seeds: Sequence[int], size: int) -> torch.Tensor:
    """Unit Gaussian latents, one generator per seed, so a candidate depends on its own seed only."""
    shape = (pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]).to(
        pipe.device, pipe.unet.dtype
    )


@torch.inference_mode()
def decode_latents(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> list[np.ndarray]:
    """Latents → list of RGB uint8 arrays."""
    decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    images = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [image.permute(1, 2, 0).cpu().numpy() for image in images]


def plan_bounds(plans: Sequence[SamplingPlan]) -> list[tuple[int, int]]:
    """Each plan's candidate rows in a batch of ``plans``, as (start, stop)."""
    bounds = np.cumsum([0] + [len(plan.seeds) for plan in plans]).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def split_per_plan(items: Sequence, plans: Sequence[SamplingPlan]) -> list[list]:
    """Cut a per-candidate sequence back into one list per plan."""
    return [list(items[start:stop]) for start, stop in plan_bounds(plans)]


class BatchedRun:
    """The candidates of several plans that share a schedule, denoised one step per ``step()`` call, so that a
    caller can report progress, interleave other work, or let plans leave the batch (``keep``) between steps.
    A candidate's rows depend on its own seed and conditioning only, so the plans kept go on as they would have
    without the others (within the numerics of a smaller batch)."""

    plans: list[SamplingPlan]
    latents: torch.Tensor
    conditioning: Conditioning
    timesteps: torch.Tensor
    done: int

    @property
    def total(self) -> int:
        return len(self.timesteps)

    @torch.inference_mode()
    def keep(self, positions: Sequence[int]) -> torch.Tensor:
        """Go on with the plans at ``positions`` (indices into ``plans``) only; the others' candidates leave the
        batch. Returns the candidate rows kept, for a subclass's own per-candidate tensors."""
        bounds = plan_bounds(self.plans)
        rows = torch.tensor([row for p in positions for row in range(*bounds[p])], dtype=torch.long)
        self.plans = [self.plans[p] for p in positions]
        self.latents = self.latents[rows.to(self.latents.device)]
        self.conditioning = self.conditioning.candidates(rows.to(self.latents.device))
        return rows.to(self.latents.device)
