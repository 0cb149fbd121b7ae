"""Stage 3, the blend sampler: continue from x_t1 to 0.

1. batch the requests' candidates: layout latents x_t1, face masks M and identity weights λ;
2. encode the conditioning and resume the shared schedule at t1;
3. at every step, run the identity and identity-free branches (and classifier-free guidance for both) in one
   batched UNet call, and fuse the next latents inside the face mask:
   x_{t−1} = λ·M ⊙ x^id_{t−1} + (1 − λ·M) ⊙ x^free_{t−1};
4. decode the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

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
    make_scheduler,
    shared_schedule,
    split_per_plan,
)


def fuse_branches(
    free: torch.Tensor, identities: torch.Tensor, masks: torch.Tensor, identity_weight: float | torch.Tensor
) -> torch.Tensor:
    """Σ_i λ·M_i ⊙ identity_i + (1 − λ·Σ_i M_i) ⊙ free: ``identities`` [P, N, C, h, w], one branch per person;
    ``masks`` [N, P, h, w], broadcast over channels and disjoint where they touch (``disjoint_masks``); λ a float
    or [N, 1, 1, 1]. For one person, λ·M ⊙ identity + (1 − λ·M) ⊙ free."""
    weights = identity_weight * masks
    fused = sum(weights[:, i : i + 1] * identity for i, identity in enumerate(identities))
    return fused + (1 - weights.sum(1, keepdim=True)) * free


def disjoint_masks(masks: torch.Tensor) -> torch.Tensor:
    """People's masks [N, P, h, w] normalised where their sum exceeds 1, so no pixel takes more than a whole
    identity and each region's identity dominates it (one person's mask is returned as it is)."""
    if masks.shape[1] == 1:
        return masks
    return masks / masks.sum(1, keepdim=True).clamp(min=1.0)


def identity_weights(plans: Sequence[SamplingPlan], latents: torch.Tensor) -> torch.Tensor:
    """Each candidate's λ, its plan's identity weight, as [N, 1, 1, 1] in the latents' dtype and device."""
    return torch.tensor(
        [plan.identity_weight for plan in plans for _ in plan.seeds], dtype=latents.dtype, device=latents.device
    ).view(-1, 1, 1, 1)


BranchNoise = Callable[..., torch.Tensor]
"""``noise(pipe, latents, timestep, conditioning, branch_gates, branch_people)`` → guided noise [branches, M, C,
h, w]:
``guided_noise`` (one UNet call for every branch) or the naive blend's branch-by-branch calls (``baselines``)."""


def blend_step(
    pipe: StableDiffusionPipeline,
    scheduler,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    masks: torch.Tensor,
    identity_weight: float | torch.Tensor,
    branch_noise: BranchNoise = guided_noise,
) -> torch.Tensor:
    """One denoising step for all candidates: one UNet call (the identity-free branch and one identity branch per
    person), one scheduler step over every branch, one fuse."""
    people = masks.shape[1]
    model_input = scheduler.scale_model_input(latents, timestep)
    noise = branch_noise(
        pipe, model_input, timestep, conditioning, (IDENTITY_FREE, *[IDENTITY] * people), (0, *range(people))
    )
    branches = scheduler.step(noise.flatten(0, 1), timestep, latents.repeat(1 + people, 1, 1, 1)).prev_sample
    free, *identities = branches.chunk(1 + people)
    return fuse_branches(free, torch.stack(identities), masks, identity_weight)


class BlendRun(BatchedRun):
    """The blend sampling of several requests that share a schedule, one step per ``step()`` call (see
    ``BatchedRun``). ``branch_noise`` predicts the branches' noise (the baselines' naive blend calls the UNet once
    per branch)."""

    @torch.inference_mode()
    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        plans: Sequence[SamplingPlan],
        latents: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        branch_noise: BranchNoise = guided_noise,
    ) -> None:
        schedule = shared_schedule(plans)  # checked first: the plans must share one
        self.pipe, self.plans, self.branch_noise = pipe, list(plans), branch_noise
        # 1. Batch the candidates: layout latents, face masks, identity weights
        self.latents, self.masks = torch.cat(list(latents)), torch.cat(list(masks))
        self.weights = identity_weights(plans, self.latents)
        # 2. Encode the conditioning and resume the shared schedule at t1
        self.conditioning = encode_conditioning(pipe, plans)
        self.scheduler = make_scheduler(pipe, schedule.steps)
        self.timesteps = self.scheduler.timesteps[schedule.layout_steps :]
        self.done = 0

    @torch.inference_mode()
    def step(self) -> int:
        """3. Run the next step (both branches, fused); returns how many steps are done."""
        timestep = self.timesteps[self.done]
        self.latents = blend_step(
            self.pipe,
            self.scheduler,
            self.latents,
            timestep,
            self.conditioning,
            self.masks,
            self.weights,
            self.branch_noise,
        )
        self.done += 1
        return self.done

    @torch.inference_mode()
    def keep(self, positions: Sequence[int]) -> torch.Tensor:
        rows = super().keep(positions)
        self.masks, self.weights = self.masks[rows], self.weights[rows]
        return rows

    def images(self) -> list[list[np.ndarray]]:
        """4. Decode every candidate; one list of RGB images per plan."""
        return split_per_plan(decode_latents(self.pipe, self.latents), self.plans)


def blend_sample(
    pipe: StableDiffusionPipeline,
    plan: SamplingPlan,
    latents: torch.Tensor,
    masks: torch.Tensor,
    on_step: StepCallback | None = None,
) -> list[np.ndarray]:
    """Denoise one request's layout latents from t1 to 0 and decode them into N RGB candidates."""
    # 1.–2. Batch the candidates and resume the schedule at t1
    run = BlendRun(pipe, [plan], [latents], [masks])
    # 3. Denoise step by step to 0
    while run.done < run.total:
        done = run.step()
        if on_step is not None:
            on_step(done, run.total)
    # 4. Decode
    return run.images()[0]
