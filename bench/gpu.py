"""The diffusion stages on one GPU, in one process, with only the GPU machine's own packages and the wheels of
``bench/gpu_kit.sh`` (no Ray, no service).

    bash bench/gpu_kit.sh .gpu-kit                                  # here: the wheels that machine lacks (14 MiB)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-kit/*.whl   # there
    PYTHONPATH=/tmp/site:. python3 bench/gpu.py                     # there
    python bench/gpu.py --device cpu --profile tiny --steps 2       # here: the smoke test

The workload is production's: the ``full-size`` profile (SD1.5's architectures with seeded random weights),
float16, PyTorch's scaled-dot-product attention and channels-last (``place_pipeline``), N=4 candidates → K=2
portraits, 512² → 1024², 25 DDIM steps, the ``xmas-sweater`` style's LoRA active. Three methods on the same
inputs (seeds, prompt, identity, style):

- ``blend``: the layout (prompt only to t1, x̂0 with identity, a mask per candidate), then the blend sampler (both
  branches in one UNet call per step) — the service's stages 2 and 3 — then the safety check of the N candidates
  (stage 4) and the K portraits ×2 with face restoration (stage 5);
- ``plain_ip_adapter``: IP-Adapter-FaceID in every step and everywhere, same N and steps;
- ``naive_blend``: the same layout and blend with two UNet calls per step, one per branch;

then all three again with the UNet compiled as ``compile_unet`` does it in the service (the style hot-swapped
into one LoRA slot of rank ``max_lora_rank``).

What cannot travel to that machine, and what stands in for it (the JSON says it too): dlib's model data (100 MB)
and with it every face detection. The layout's mask is the style's prior ellipse for every candidate (what random
weights give anyway: their x̂0 shows no face); stage 1 (preprocess) and stage 4's fusion and ranking are not
measured (a random unit vector stands for the reference's ArcFace embedding, the first K candidates are kept);
face restoration works on the face where the prior ellipse puts it.

Prints a JSON line after each phase (so a run cut short still reports) and the whole result as JSON on the last
line: p50/p99 per method and stage (ms), UNet calls and evaluated latent rows per second, peak GPU memory per
stage (MiB, weights included), compiled/uncompiled ratios, and the goals (request p50 ≤ 2.0 s on one H100-class
GPU, blend ≤ 1.6× plain IP-Adapter's time).
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
from e2e import STYLE, styles_for
from serving import summary

from serve_app.pipeline.baselines import blend_latents, noise_branch_by_branch, sample_constant_identity
from serve_app.pipeline.blend import blend_sample
from serve_app.pipeline.faces import ARCFACE_TEMPLATE
from serve_app.pipeline.layout import Layout, generate_layout
from serve_app.pipeline.lora import StyleAdapters, style_adapters
from serve_app.pipeline.masks import TEMPLATE_OUTLINE_BOX, Ellipse, prior_ellipse
from serve_app.pipeline.models import Models
from serve_app.pipeline.sampling import IDENTITY, SamplingPlan, decode_latents
from serve_app.pipeline.settings import ModelSettings
from serve_app.pipeline.upscale import upscale_portrait
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import Style

METHODS = ("blend", "plain_ip_adapter", "naive_blend")
STANDS_IN = {
    "layout_face_detection": "the style's prior ellipse is every candidate's mask (dlib's detector needs its model "
    "data, 100 MB; random weights' x̂0 shows no face, so the service's layout falls back to the same prior)",
    "reference_identity": "a random unit vector for the reference's ArcFace embedding (stage 1 not run)",
    "ranking": "the first K candidates are the portraits kept (stage 4's fusion and scoring not run)",
    "face_restoration_points": "the ArcFace template's five points inside the prior ellipse",
}
NOT_MEASURED = ["preprocess (stage 1): dlib detection and landmarks", "fusion and ranking (stage 4): dlib"]
GOALS = {"request_p50_s_at_most": 2.0, "blend_over_plain_ip_adapter_at_most": 1.6}


class PriorOnly:
    """The layout's face analyzer: finds no face, so every mask is the style's prior ellipse."""

    def detect_generated(self, image: np.ndarray, region: object = None, people: int = 1) -> list:
        return []


def prior_face_points(ellipse: Ellipse) -> np.ndarray:
    """The ArcFace template's five points placed so that its face outline fills ``ellipse`` (masks.face_ellipse
    inverted, upright)."""
    (cx, cy), (rx, ry) = ellipse
    x0, y0, x1, y1 = TEMPLATE_OUTLINE_BOX
    scale = rx / (x1 - x0) + ry / (y1 - y0)  # mean of the two axes' scales (radius = half the box side)
    return np.array([cx, cy], np.float32) + scale * (ARCFACE_TEMPLATE - [(x0 + x1) / 2, (y0 + y1) / 2])


@dataclass
class Measured:
    """One method's repeats: ms per stage per repeat, peak MiB per stage."""

    stage_ms: dict[str, list[float]] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, ms: float, peak_mib: float | None) -> None:
        self.stage_ms.setdefault(stage, []).append(ms)
        if peak_mib is not None:
            self.peak_mib[stage] = max(self.peak_mib.get(stage, 0.0), round(peak_mib))

    def totals(self, stages: tuple[str, ...]) -> list[float]:
        return [sum(parts) for parts in zip(*(self.stage_ms[stage] for stage in stages))]


class Timer:
    """Stage times that include the GPU's queued work, and the peak memory allocated during each stage."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def stage(self, measured: Measured, name: str) -> Iterator[None]:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        yield
        self.sync()
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        measured.add(name, (time.perf_counter() - start) * 1000, peak)


@contextmanager
def unet_work(unet: torch.nn.Module) -> Iterator[list[int]]:
    """Counts UNet calls and the latent rows they evaluate while inside (a forward pre-hook; uncompiled UNet)."""
    counts = [0, 0]

    def count(_module: torch.nn.Module, args: tuple) -> None:
        counts[0] += 1
        counts[1] += args[0].shape[0]

    handle = unet.register_forward_pre_hook(count)
    try:
        yield counts
    finally:
        handle.remove()


class Workload:
    """The three methods on one set of models, with the style active."""

    def __init__(self, models: Models, plan: SamplingPlan, prior: Ellipse, top_k: int, upscale: int) -> None:
        self.models, self.pipe, self.plan, self.prior = models, models.diffusion, plan, prior
        self.top_k, self.upscale = top_k, upscale
        self.timer = Timer(models.device)

    def layout(self, measured: Measured) -> Layout:
        with self.timer.stage(measured, "layout"):
            return generate_layout(self.pipe, PriorOnly(), self.plan, [self.prior])

    def blend(self, measured: Measured) -> None:
        layout = self.layout(measured)
        with self.timer.stage(measured, "blend"):
            images = blend_sample(self.pipe, self.plan, layout.latents, layout.masks)
        with self.timer.stage(measured, "safety"):
            self.models.safety_checker.flags(images)
        points = prior_face_points(self.prior)
        with self.timer.stage(measured, "upscale"):
            for image in images[: self.top_k]:
                upscale_portrait(self.models.upscalers, self.models.face_restorer, image, [points], self.upscale)

    def plain_ip_adapter(self, measured: Measured) -> None:
        with self.timer.stage(measured, "sample"):
            decode_latents(self.pipe, sample_constant_identity(self.pipe, self.plan, IDENTITY))

    def naive_blend(self, measured: Measured) -> None:
        layout = self.layout(measured)
        with self.timer.stage(measured, "blend"):
            decode_latents(self.pipe, blend_latents(self.pipe, self.plan, layout, layout.masks, noise_branch_by_branch))


DIFFUSION_STAGES = {"blend": ("layout", "blend"), "plain_ip_adapter": ("sample",), "naive_blend": ("layout", "blend")}


def method_report(measured: Measured, method: str, unet: list[int]) -> dict:
    diffusion = measured.totals(DIFFUSION_STAGES[method])
    seconds = float(np.median(diffusion)) / 1000
    report = {
        "repeats": len(diffusion),
        "stage_ms": {stage: summary(times) for stage, times in measured.stage_ms.items()},
        "diffusion_ms": summary(diffusion),
        "unet_calls": unet[0],
        "unet_rows": unet[1],
        "unet_calls_per_s": round(unet[0] / seconds, 1),
        "unet_rows_per_s": round(unet[1] / seconds, 1),
        "peak_mib": measured.peak_mib,
    }
    if method == "blend":
        report["request_ms"] = summary(measured.totals(tuple(measured.stage_ms)))
    return report


def run_phase(workload: Workload, warmups: int, repeats: int, deadline: float, counted: dict[str, list[int]]) -> dict:
    """Each method: ``warmups`` untimed runs, then ``repeats`` timed ones (fewer past ``deadline``, at least one).
    The UNet work of a method not yet in ``counted`` is counted on its first warm-up run."""
    reports = {}
    for method in METHODS:
        run: Callable[[Measured], None] = getattr(workload, method)
        for warmup in range(warmups):
            if warmup == 0 and method not in counted:
                with unet_work(workload.pipe.unet) as counted[method]:
                    run(Measured())
            else:
                run(Measured())
        measured = Measured()
        for index in range(repeats):
            if index and time.monotonic() > deadline:
                break
            run(measured)
        reports[method] = method_report(measured, method, counted[method])
    return reports


def build(settings: ModelSettings, style: Style) -> tuple[Models, StyleAdapters, float]:
    """The models the workload uses, built now, with the style loaded; and the seconds that took."""
    start = time.perf_counter()
    models = Models(settings)
    models.build("diffusion", "safety_checker", "upscalers", "face_restorer")
    adapters = style_adapters(models.diffusion)
    adapters.load(style.versioned_id, style.read_lora)
    return models, adapters, time.perf_counter() - start


def weights_mib(device: torch.device) -> float | None:
    return round(torch.cuda.memory_allocated(device) / 2**20) if device.type == "cuda" else None


def released(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sampling_plan(style: Style, candidates: int, size: int, steps: int) -> SamplingPlan:
    """The style's prompt and defaults for ``candidates`` seeds; a random unit identity embedding."""
    defaults = style.manifest.defaults
    identity = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    return SamplingPlan(
        prompt=style.manifest.prompt("a person"),
        negative_prompt=style.manifest.negative_prompt,
        identity_embeddings=(identity,),
        seeds=tuple(range(1, 1 + candidates)),
        size=size,
        steps=steps,
        guidance_scale=defaults.guidance_scale,
        identity_weight=defaults.identity_weight,
        t1=defaults.t1,
    )


def ratios(result: dict) -> dict:
    """Blend against its baselines in each phase, compiled against uncompiled, and the goals' figures."""

    def p50(phase: str, method: str, figure: str = "diffusion_ms") -> float:
        return result[phase]["methods"][method][figure]["p50"]

    phases = [phase for phase in ("uncompiled", "compiled") if phase in result]
    found: dict = {
        phase: {
            "blend_over_plain_ip_adapter": round(p50(phase, "blend") / p50(phase, "plain_ip_adapter"), 3),
            "naive_blend_over_blend": round(p50(phase, "naive_blend") / p50(phase, "blend"), 3),
            "request_p50_s": round(p50(phase, "blend", "request_ms") / 1000, 3),
        }
        for phase in phases
    }
    if "compiled" in result:
        found["compiled_over_uncompiled"] = {
            method: round(p50("compiled", method) / p50("uncompiled", method), 3) for method in METHODS
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--profile", default="full-size", choices=("tiny", "full-size"))
    parser.add_argument("--size", type=int, default=512, help="generated side (upscaled ×2)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="timed runs per method and phase (default 10; 1 on a CPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile phase")
    parser.add_argument("--budget-s", type=float, default=360, help="past this, one timed run per method")
    args = parser.parse_args()
    started = time.monotonic()
    device = torch.device(args.device)
    repeats = args.repeats or (10 if device.type == "cuda" else 1)
    diffusers.utils.logging.set_verbosity_error()  # not a warning per request that CLIP truncates the prompt at 77

    with tempfile.TemporaryDirectory() as folder:
        style = StyleCatalog(styles_for(args.profile, Path(folder))).get(STYLE)
        plan = sampling_plan(style, args.candidates, args.size, args.steps)
        mask = style.manifest.prior_face_mask
        prior = prior_ellipse(args.size, (mask.center_x, mask.center_y), (mask.radius_x, mask.radius_y))
        result: dict = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "profile": args.profile,
            "workload": {"candidates": args.candidates, "top_k": args.top_k, "size": args.size,
                         "upscaled_side": 2 * args.size, "steps": args.steps, "t1": plan.t1, "style": STYLE},
            "stands_in": STANDS_IN,
            "not_measured": NOT_MEASURED,
            "goals": GOALS,
        }
        counted: dict[str, list[int]] = {}
        for compiled in (False,) if args.no_compile else (False, True):
            phase = "compiled" if compiled else "uncompiled"
            models, adapters, build_s = build(ModelSettings(profile=args.profile, device=args.device,
                                                            compile_unet=compiled), style)
            result["dtype"] = str(models.dtype).removeprefix("torch.")
            start = time.perf_counter()
            with adapters.active(style.versioned_id, style.manifest.lora.scale):
                workload = Workload(models, plan, prior, args.top_k, upscale=2)
                reports = run_phase(workload, 2 if compiled else 1, repeats, started + args.budget_s, counted)
            result[phase] = {"build_s": round(build_s, 1), "weights_mib": weights_mib(device),
                             "run_s": round(time.perf_counter() - start, 1), "methods": reports}
            print(json.dumps({phase: result[phase]}), flush=True)
            del workload, adapters, models
            released(device)
    result["ratios"] = ratios(result)
    result["total_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
