"""One blend denoising step for N candidates: batched (one UNet call for every candidate, both branches and both
guidance halves) against naive (per candidate, an identity-free CFG call and an identity CFG call); and the group
step for P = 1…4 people (the identity-free branch and one identity branch per person in one UNet call) against
P + 1 separate branch calls (each over every candidate).

    python bench/blend_step.py [--candidates 4] [--size 128] [--repeats 15]

Prints JSON on the last line: {"batched_ms", "naive_ms", "speedup", ..., "group": {P: {...}}}; medians of
interleaved repeats on the same model and inputs, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from serve_app.pipeline.baselines import noise_branch_by_branch
from serve_app.pipeline.blend import blend_step, disjoint_masks, fuse_branches
from serve_app.pipeline.models import load_models
from serve_app.pipeline.sampling import (
    IDENTITY,
    IDENTITY_FREE,
    SamplingPlan,
    encode_conditioning,
    guided_noise,
    initial_latents,
    make_scheduler,
)


def naive_step(pipe, scheduler, latents, timestep, conditioning, masks, identity_weight):
    fused = []
    for index in range(latents.shape[0]):
        latent = latents[index : index + 1]
        model_input = scheduler.scale_model_input(latent, timestep)
        single = conditioning.candidates(slice(index, index + 1))
        branches = [
            scheduler.step(guided_noise(pipe, model_input, timestep, single, (gate,))[0], timestep, latent)
            .prev_sample
            for gate in (IDENTITY_FREE, IDENTITY)
        ]
        fused.append(fuse_branches(branches[0], branches[1][None], masks[index : index + 1], identity_weight))
    return torch.cat(fused)


def batched_step_ms(pipe, plan: SamplingPlan, candidates: int, repeats: int = 3) -> float:
    """One batched blend step for ``candidates`` candidates (how cross-request batching scales)."""
    plan = SamplingPlan(**{**plan.__dict__, "seeds": tuple(range(candidates))})
    conditioning = encode_conditioning(pipe, [plan])
    scheduler = make_scheduler(pipe, plan.steps)
    timestep = scheduler.timesteps[plan.layout_steps]
    latents = initial_latents(pipe, plan.seeds, plan.size)
    masks = torch.ones(candidates, 1, *latents.shape[-2:])
    step = lambda: blend_step(pipe, scheduler, latents, timestep, conditioning, masks, plan.identity_weight)
    step()
    return statistics.median(timed_ms(step) for _ in range(repeats))


def group_figures(pipe, plan: SamplingPlan, repeats: int) -> dict[int, dict[str, float]]:
    """Per people count P: the batched group step against P + 1 separate branch calls, medians of interleaved
    repeats, and the peak tensor memory of each step."""
    generator = torch.Generator().manual_seed(1)
    figures = {}
    for people in (1, 2, 3, 4):
        embeddings = tuple(torch.nn.functional.normalize(torch.randn(512, generator=generator), dim=0)
                           for _ in range(people))
        group = SamplingPlan(**{**plan.__dict__, "identity_embeddings": embeddings})
        conditioning = encode_conditioning(pipe, [group])
        scheduler = make_scheduler(pipe, group.steps)
        timestep = scheduler.timesteps[group.layout_steps]
        latents = initial_latents(pipe, group.seeds, group.size)
        masks = disjoint_masks(torch.rand(len(group.seeds), people, *latents.shape[-2:], generator=generator))
        steps = {
            name: (lambda noise=noise: blend_step(pipe, scheduler, latents, timestep, conditioning, masks,
                                                  group.identity_weight, noise))
            for name, noise in (("batched", guided_noise), ("separate", noise_branch_by_branch))
        }
        difference = (steps["batched"]() - steps["separate"]()).abs().max().item()
        step_mib = {name: peak_mib(step) for name, step in steps.items()}
        times = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                times[name].append(timed_ms(step))
        batched_ms, separate_ms = (statistics.median(times[name]) for name in ("batched", "separate"))
        figures[people] = {
            "batched_ms": round(batched_ms, 2),
            "separate_ms": round(separate_ms, 2),
            "speedup": round(separate_ms / batched_ms, 3),
            "unet_rows": (people + 3) * len(group.seeds),  # two negative halves, P + 1 positive
            "batched_step_mib": step_mib["batched"],
            "separate_step_mib": step_mib["separate"],
            "max_abs_difference": difference,
        }
    return figures


def peak_mib(step) -> float:
    """The peak of the tensor memory one call of ``step`` holds above what it started with: the profiler's
    allocations (counted at the start of the op that makes them) and frees, in order."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    events = sorted(profiler.events(), key=lambda event: event.time_range.start)
    held = peak = 0
    for event in events:
        held += event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        peak = max(peak, held)
    return round(peak / 2**20, 1)


def timed_ms(step) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image side (the tiny styles use 128)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    pipe = load_models().diffusion
    plan = SamplingPlan(
        prompt="studio portrait photo of a person",
        negative_prompt="blurry",
        identity_embeddings=(torch.nn.functional.normalize(torch.randn(512), dim=0),),
        seeds=tuple(range(args.candidates)),
        size=args.size,
        steps=12,
        guidance_scale=7.5,
        identity_weight=0.8,
        t1=0.35,
    )
    conditioning = encode_conditioning(pipe, [plan])
    scheduler = make_scheduler(pipe, plan.steps)
    timestep = scheduler.timesteps[plan.layout_steps]
    latents = initial_latents(pipe, plan.seeds, plan.size)
    masks = torch.rand(args.candidates, 1, *latents.shape[-2:], generator=torch.Generator().manual_seed(0))

    def batched():
        return blend_step(pipe, scheduler, latents, timestep, conditioning, masks, plan.identity_weight)

    def naive():
        return naive_step(pipe, scheduler, latents, timestep, conditioning, masks, plan.identity_weight)

    with torch.inference_mode():
        difference = (batched() - naive()).abs().max().item()
        batched_times, naive_times = [], []
        for _ in range(args.repeats):
            batched_times.append(timed_ms(batched))
            naive_times.append(timed_ms(naive))
        per_candidate_ms = {n: round(batched_step_ms(pipe, plan, n) / n, 2) for n in (1, 4, 16)}
        group = group_figures(pipe, plan, args.repeats)
    batched_ms, naive_ms = statistics.median(batched_times), statistics.median(naive_times)
    print(
        json.dumps(
            {
                "candidates": args.candidates,
                "latent_side": latents.shape[-1],
                "threads": torch.get_num_threads(),
                "batched_ms": round(batched_ms, 2),
                "naive_ms": round(naive_ms, 2),
                "speedup": round(naive_ms / batched_ms, 3),
                "max_abs_difference": difference,
                "batched_ms_per_candidate_by_candidates": per_candidate_ms,
                "group": group,
            }
        )
    )


if __name__ == "__main__":
    main()
