"""What the blend sampler is measured against (``bench/quality.py``, ``bench/gpu.py``), on the same seeds,
schedule and conditioning: plain IP-Adapter-FaceID (identity in every step and everywhere, the standard diffusers
way), the prompt alone (no identity) and the naive blend (the same blend, two UNet calls per step); and the
locality of the blend's identity, a structural property that needs no real weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from diffusers import StableDiffusionPipeline

from serve_app.pipeline.blend import BlendRun, BranchNoise
from serve_app.pipeline.faces import FaceAnalyzer
from serve_app.pipeline.layout import Layout, LayoutRun, generate_layout
from serve_app.pipeline.masks import Ellipse
from serve_app.pipeline.sampling import (
    IDENTITY,
    IDENTITY_FREE,
    Conditioning,
    SamplingPlan,
    guided_noise,
)

# Where a soft mask counts as outside the face region (M ≈ 0) and inside it (M ≈ 1).
OUTSIDE, INSIDE = 0.01, 0.99


@torch.inference_mode()
def sample_constant_identity(pipe: StableDiffusionPipeline, plan: SamplingPlan, identity_gate: float) -> torch.Tensor:
    """The final latents [N, C, h, w] with one identity gate in every step: 1 plain IP-Adapter, 0 the prompt alone."""
    run = LayoutRun(pipe, [plan], plan.steps, identity_gate)
    while run.done < run.total:
        run.step()
    return run.latents


def noise_branch_by_branch(
    pipe: StableDiffusionPipeline,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    conditioning: Conditioning,
    branch_gates: Sequence[float],
    branch_people: Sequence[int] | None = None,
) -> torch.Tensor:
    """``guided_noise`` the naive way, one UNet call per branch: the naive blend's noise."""
    people = branch_people or [0] * len(branch_gates)
    calls = zip(branch_gates, people)
    return torch.stack([guided_noise(pipe, latents, timestep, conditioning, (gate,), (person,))[0] for gate, person in calls])


@torch.inference_mode()
def blend_latents(
    pipe: StableDiffusionPipeline,
    plan: SamplingPlan,
    layout: Layout,
    masks: torch.Tensor,
    branch_noise: BranchNoise = guided_noise,
) -> torch.Tensor:
    """The final latents of the blend sampler from a layout, blending inside ``masks`` (all ones: identity
    everywhere from t1 on), the branches' noise from ``branch_noise``."""
    run = BlendRun(pipe, [plan], [layout.latents], [masks], branch_noise)
    while run.done < run.total:
        run.step()
    return run.latents


@dataclass(frozen=True)
class Locality:
    """The blend's effect on the final latents as a share of identity everywhere, outside the face mask and in it,
    at λ = 1 from the same noise: against plain IP-Adapter (identity in every step), and against identity
    everywhere in the same steps as the blend (from t1 on), which isolates where from when."""

    outside_mask_ratio: float
    inside_mask_ratio: float
    outside_mask_ratio_same_steps: float
    inside_mask_ratio_same_steps: float


@torch.inference_mode()
def locality(
    pipe: StableDiffusionPipeline, faces: FaceAnalyzer, plan: SamplingPlan, priors: Sequence[Ellipse]
) -> Locality:
    """mean|blend − none| / mean|reference − none| over the latents where the layout masks (all people's) are ≈ 0,
    and ≈ 1."""
    plan = replace(plan, identity_weight=1.0)
    none = sample_constant_identity(pipe, plan, IDENTITY_FREE)
    plain = sample_constant_identity(pipe, plan, IDENTITY)
    layout = generate_layout(pipe, faces, plan, priors)
    blend = blend_latents(pipe, plan, layout, layout.masks)
    from_t1 = blend_latents(pipe, plan, layout, torch.ones_like(layout.masks))
    masks = layout.masks.sum(1, keepdim=True).expand_as(blend)

    def ratio(reference: torch.Tensor, region: torch.Tensor) -> float:
        return float((blend - none).abs()[region].mean() / (reference - none).abs()[region].mean())

    outside, inside = masks < OUTSIDE, masks > INSIDE
    return Locality(ratio(plain, outside), ratio(plain, inside), ratio(from_t1, outside), ratio(from_t1, inside))


@dataclass(frozen=True)
class PersonLocality:
    """Person i's identity effect on a group blend's final latents (the blend against the same blend with M_i
    emptied, so their region takes the identity-free branch): its mean outside their own mask as a share of its
    mean inside, and its mean inside each other person's mask as that share."""

    outside_own_mask_ratio: float
    in_others_masks_ratio: float


@torch.inference_mode()
def person_locality(
    pipe: StableDiffusionPipeline, faces: FaceAnalyzer, plan: SamplingPlan, priors: Sequence[Ellipse]
) -> list[PersonLocality]:
    """Each person's ``PersonLocality`` at λ = 1, from one layout and the same noise."""
    plan = replace(plan, identity_weight=1.0)
    layout = generate_layout(pipe, faces, plan, priors)
    blend = blend_latents(pipe, plan, layout, layout.masks)
    found = []
    for person in range(plan.people):
        emptied = layout.masks.clone()
        emptied[:, person] = 0
        effect = (blend - blend_latents(pipe, plan, layout, emptied)).abs()
        own = layout.masks[:, person : person + 1].expand_as(effect)
        others = torch.cat([layout.masks[:, :person], layout.masks[:, person + 1 :]], 1).amax(1, keepdim=True)
        inside = float(effect[own > INSIDE].mean())
        found.append(PersonLocality(
            outside_own_mask_ratio=float(effect[own < OUTSIDE].mean()) / inside,
            in_others_masks_ratio=float(effect[others.expand_as(effect) > INSIDE].mean()) / inside,
        ))
    return found
