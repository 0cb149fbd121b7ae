"""Portrait quality, measured: the blend sampler against plain IP-Adapter-FaceID and the prompt alone, on the same
reference faces, styles, seeds, steps and size.

    python bench/quality.py --profile tiny --out /tmp/quality
    python bench/quality.py --profile full-size --out DIR                   # a GPU: production shapes, random weights
    python bench/quality.py --profile production --weights-dir W --out DIR  # real weights: real figures
    python bench/quality.py --profile tiny-commercial --out DIR              # the commercial code paths
    python bench/quality.py --profile tiny --out DIR --group                # and group portraits of 2 and 3

Methods (the style's LoRA active in all):
- ``blend``: the service's sampler (prompt-only layout to t1, then identity λ·M inside the layout's face mask),
  without face fusion and upscaling, so that the sampler is what is judged;
- ``blend_fused``: the same candidates after the fusion ranker's face fusion and ×2 upscaling (reported apart);
- ``plain_ip_adapter``: the profile's IP-Adapter (FaceID; Plus-face on the commercial profiles) in every step and
  everywhere (the standard diffusers way);
- ``no_identity``: the prompt alone.

Metrics, per image and averaged per method:
- ``identity_similarity``: dlib's ResNet descriptor (a face recognizer other than what conditions: ArcFace, or the
  commercial profiles' CLIP tower; summary.json's ``judge`` names all three) of the
  image's face against the reference's, 1 − distance/1.2 clipped to 0..1 (> 0.5 ≈ the same person); null when
  dlib finds no face (``face_found`` is the share it found);
- ``non_face_similarity_to_reference``: how much everything outside the face (hair, clothes, background: the
  blend's layout mask < 0.5 for that seed) resembles the reference render there: the mean of a colour-histogram
  intersection and SSIM over that region (0..1; lower means the style, not the render, decided it);
- ``diversity``: mean pairwise distance of the non-face regions across seeds (mean |a − b| / 255);
- ``prompt_adherence``: CLIP-T, null: no profile here carries a whole CLIP model (image and text towers);
- ``seam`` (λ sweep): gradient energy on the mask's boundary band over the energy in the face and around it.
Locality (``serve_app.pipeline.baselines.locality``) is the structural proxy that needs no real weights.

With ``--group``, group portraits of 2 and 3 different people too (``group_quality``: each face against each
person's reference, bleed and margin, per-person locality, and which of those mean something on tiny).

Writes DIR/summary.json, DIR/report.html (a contact sheet), DIR/lambda_sweep.png; prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import itertools
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import torch
import transformers
from group_quality import (
    GROUP_SIZES,
    GroupCase,
    GroupJudge,
    default_group_faces,
    group_case,
    group_report,
    group_summary,
)
from serving import REPO
from skimage.metrics import structural_similarity

from serve_app.pipeline.baselines import locality, sample_constant_identity
from serve_app.pipeline.blend import blend_sample
from serve_app.pipeline.faces import DlibFaceAnalyzer
from serve_app.pipeline.fusion import make_candidates
from serve_app.pipeline.images import decode_image, encode_png
from serve_app.pipeline.layout import Layout, generate_layout
from serve_app.pipeline.masks import Ellipse, to_image_resolution
from serve_app.pipeline.models import Models, load_models
from serve_app.pipeline.portrait import PortraitPipeline, face_prior_ellipses, make_plan
from serve_app.pipeline.preprocess import Reference, preprocess
from serve_app.pipeline.recognition import DlibRecognizer
from serve_app.pipeline.sampling import IDENTITY, IDENTITY_FREE, SamplingPlan, decode_latents
from serve_app.pipeline.settings import PROFILES, ModelSettings
from serve_app.pipeline.upscale import upscale_portrait
from serve_app.portrait_request import portrait_request
from serve_app.sample import sample_face
from serve_app.schemas import PortraitOptions
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import Style

matplotlib.use("Agg")
from matplotlib import pyplot  # noqa: E402 (after choosing the file-only backend)

METHODS = ("blend", "blend_fused", "plain_ip_adapter", "no_identity")
LAMBDAS = (0.25, 0.5, 0.75, 1.0)
GROUP_SIZE = 256  # the group portraits' default side: room for two or three faces a detector finds
FUSED_UPSCALE = 2
DLIB_SAME_PERSON_DISTANCE = 0.6  # dlib's threshold: similarity 0.5 there


@dataclass
class Judged:
    """One image and its scores."""

    image: np.ndarray
    seed: int
    identity_similarity: float | None
    non_face_similarity_to_reference: float


@dataclass(frozen=True)
class Face:
    """One reference, prepared once for every style: what the pipeline conditions on, the render (a centred
    square) the non-face regions are compared with, and dlib's descriptor of it (None if dlib finds no face)."""

    name: str
    reference: Reference
    render: np.ndarray
    descriptor: np.ndarray | None


@dataclass
class Case:
    """One reference face in one style: every method's judged images, the layout masks, the λ sweep."""

    face: str
    style: str
    reference: np.ndarray  # the render at the generated size
    masks: list[np.ndarray] = field(default_factory=list)
    methods: dict[str, list[Judged]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    sweep: list[dict] = field(default_factory=list)


class Judge:
    """Scores an image against a reference face: identity by dlib's ResNet descriptor, and the likeness of
    everything outside the face to the reference render."""

    def __init__(self) -> None:
        self.faces = DlibFaceAnalyzer()
        self.recognizer = DlibRecognizer(self.faces)

    def descriptor(self, render: np.ndarray) -> np.ndarray | None:
        found = self.faces.detect(render)
        return self.recognizer.describe(render, found[0]) if found else None

    def identity(self, image: np.ndarray, face: Face) -> float | None:
        found = self.faces.detect_generated(image)
        if not found or face.descriptor is None:
            return None
        distance = float(np.linalg.norm(self.recognizer.describe(image, found[0]) - face.descriptor))
        return float(np.clip(1 - distance / (2 * DLIB_SAME_PERSON_DISTANCE), 0, 1))

    def judged(self, image: np.ndarray, seed: int, face: Face, mask: np.ndarray) -> Judged:
        """``mask``: the candidate's layout mask, at any resolution."""
        side = image.shape[0]
        similarity = non_face_similarity(image, resized(face.render, side), outside_face(mask, side))
        return Judged(image, seed, self.identity(image, face), similarity)


def outside_face(mask: np.ndarray, side: int) -> np.ndarray:
    """Where a layout mask (any resolution) is under one half, at ``side`` pixels: hair, clothes, background."""
    return to_image_resolution(mask, side) < 0.5


def resized(image: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def square(image: np.ndarray) -> np.ndarray:
    """The centred square crop of an image."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


def non_face_similarity(image: np.ndarray, reference: np.ndarray, outside: np.ndarray) -> float:
    """Mean of the colour-histogram intersection and the SSIM of two images over the ``outside`` region."""
    region = outside.astype(np.uint8)
    histograms = [
        cv2.normalize(cv2.calcHist([picture], [0, 1, 2], region, [8, 8, 8], [0, 256] * 3), None, 1, 0, cv2.NORM_L1)
        for picture in (image, reference)
    ]
    intersection = float(cv2.compareHist(*histograms, cv2.HISTCMP_INTERSECT))
    grey = [cv2.cvtColor(picture, cv2.COLOR_RGB2GRAY) for picture in (image, reference)]
    _, ssim = structural_similarity(*grey, full=True, data_range=255)
    return (intersection + float(ssim[outside].mean())) / 2


def diversity(images: list[np.ndarray], masks: list[np.ndarray]) -> float | None:
    """Mean pairwise mean |a − b| / 255 of the non-face regions (both images' regions) across seeds."""
    pairs = list(itertools.combinations(range(len(images)), 2))
    if not pairs:
        return None
    outsides = [outside_face(mask, image.shape[0]) for image, mask in zip(images, masks)]
    return statistics.fmean(
        float(np.abs(images[i].astype(np.float32) - images[j])[outsides[i] & outsides[j]].mean() / 255)
        for i, j in pairs
    )


def seam(image: np.ndarray, mask: np.ndarray) -> float:
    """Gradient energy on the mask's boundary band (0.3 < M < 0.7) over that of the face and around it: about 1
    without a seam, above 1 where the blend's edge shows."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = cv2.Sobel(grey, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(grey, cv2.CV_32F, 0, 1) ** 2
    band = (mask > 0.3) & (mask < 0.7)
    elsewhere = (mask > 0.9) | ((mask < 0.1) & (cv2.dilate((mask > 0.1).astype(np.uint8), np.ones((9, 9))) > 0))
    return float(energy[band].mean() / max(float(energy[elsewhere].mean()), 1e-6))


class QualityRun:
    """The methods of one profile on shared inputs, judged."""

    def __init__(self, models: Models, steps: int | None, size: int | None) -> None:
        self.models, self.steps, self.size = models, steps, size
        self.pipe = models.diffusion
        self.pipeline = PortraitPipeline(models)
        self.adapters, self.ranker = self.pipeline.adapters, self.pipeline.ranker
        self.judge = Judge()

    def face(self, name: str, image: bytes) -> Face:
        render = square(decode_image(image))
        return Face(name, preprocess(self.models, image), render, self.judge.descriptor(render))

    def plan(self, style: Style, reference: Reference, seeds: list[int]) -> tuple[SamplingPlan, tuple[Ellipse, ...]]:
        options = PortraitOptions(style=style.versioned_id, seed=seeds[0], num_candidates=len(seeds), top_k=1,
                                  steps=self.steps, size=self.size)
        request = portrait_request(options, style.manifest, seeds[0])
        plan = replace(make_plan(request, [reference]), seeds=tuple(seeds))
        return plan, face_prior_ellipses(request.face_priors, plan.size)

    def case(self, face: Face, style: Style, seeds: list[int]) -> Case:
        plan, prior = self.plan(style, face.reference, seeds)
        case = Case(face.name, style.versioned_id, resized(face.render, plan.size))
        self.adapters.load(style.versioned_id, style.read_lora)
        with self.adapters.active(style.versioned_id, style.manifest.lora.scale):
            images, layout = self.sampled(case, plan, prior, face.reference)
            first = replace(plan, seeds=plan.seeds[:1])
            first_layout = replace(layout, latents=layout.latents[:1], masks=layout.masks[:1],
                                   mask_sources=layout.mask_sources[:1], previews=layout.previews[:1])
            case.sweep = [self.sweep_point(face, replace(first, identity_weight=weight), first_layout)
                          for weight in LAMBDAS]
        case.methods = {
            method: [self.judge.judged(img, seed, face, mask) for img, seed, mask in zip(found, seeds, case.masks)]
            for method, found in images.items()
        }
        return case

    def sampled(
        self, case: Case, plan: SamplingPlan, prior: Sequence[Ellipse], reference: Reference
    ) -> tuple[dict[str, list[np.ndarray]], Layout]:
        """Every method's images (at the plan's size) and the blend's layout (its masks, at image resolution, in
        ``case``), timed."""
        images: dict[str, list[np.ndarray]] = {}
        started = time.perf_counter()
        layout = generate_layout(self.pipe, self.models.faces, plan, prior)
        images["blend"] = blend_sample(self.pipe, plan, layout.latents, layout.masks)
        case.seconds["blend"] = time.perf_counter() - started
        case.masks = [to_image_resolution(mask[0].float().cpu().numpy(), plan.size) for mask in layout.masks]
        started = time.perf_counter()
        images["blend_fused"] = self.fused(images["blend"], plan, layout.masks, reference)
        case.seconds["blend_fused"] = case.seconds["blend"] + time.perf_counter() - started
        for method, gate in (("plain_ip_adapter", IDENTITY), ("no_identity", IDENTITY_FREE)):
            started = time.perf_counter()
            images[method] = decode_latents(self.pipe, sample_constant_identity(self.pipe, plan, gate))
            case.seconds[method] = time.perf_counter() - started
        return images, layout

    def fused(self, images: list[np.ndarray], plan: SamplingPlan, masks: torch.Tensor, reference: Reference):
        """The candidates through face fusion and ×2 upscaling, in seed order (judged at the upscaled size, where
        the fusion ranker's own detector looks for the face)."""
        ranked = self.ranker.rank(make_candidates(images, plan.seeds, masks), [reference], top_k=len(images))
        by_seed = {
            p.seed: upscale_portrait(self.models.upscalers, self.models.face_restorer, p.image, p.faces_points,
                                     FUSED_UPSCALE)
            for p in ranked
        }
        return [by_seed[seed] for seed in plan.seeds]

    def locality(self, face: Face, style: Style, seeds: list[int]) -> dict[str, float]:
        """The blend's locality at λ = 1 on one face in one style (``baselines.locality``)."""
        plan, prior = self.plan(style, face.reference, seeds)
        self.adapters.load(style.versioned_id, style.read_lora)
        with self.adapters.active(style.versioned_id, style.manifest.lora.scale):
            found = locality(self.pipe, self.models.faces, plan, prior)
        return {key: round(value, 4) for key, value in dataclasses.asdict(found).items()}

    def group_cases(self, faces: dict[str, bytes], style: Style, seeds: list[int]) -> list[GroupCase]:
        """The first P of ``faces`` together in ``style``, for each group size."""
        judge = GroupJudge(self.judge.recognizer)
        references = {name: self.judge.descriptor(square(decode_image(image))) for name, image in faces.items()}
        options = {"steps": self.steps, "size": self.size or GROUP_SIZE}
        return [
            group_case(self.pipeline, judge, dict(list(faces.items())[:people]), references, style, seeds, options)
            for people in GROUP_SIZES
        ]

    def sweep_point(self, face: Face, plan: SamplingPlan, layout: Layout) -> dict:
        """The blend of the first candidate's layout at the plan's λ, judged, with its seam energy."""
        image = blend_sample(self.pipe, plan, layout.latents, layout.masks)[0]
        mask = to_image_resolution(layout.masks[0, 0].float().cpu().numpy(), plan.size)
        scored = self.judge.judged(image, plan.seeds[0], face, mask)
        return {"lambda": plan.identity_weight, "identity_similarity": scored.identity_similarity,
                "non_face_similarity_to_reference": round(scored.non_face_similarity_to_reference, 4),
                "seam": round(seam(image, mask), 4), "image": image}


def mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.fmean(present), 4) if present else None


def method_summary(cases: list[Case], method: str) -> dict:
    judged = [image for case in cases for image in case.methods[method]]
    return {
        "images": len(judged),
        "face_found": round(sum(j.identity_similarity is not None for j in judged) / len(judged), 4),
        "identity_similarity": mean([j.identity_similarity for j in judged]),
        "non_face_similarity_to_reference": mean([j.non_face_similarity_to_reference for j in judged]),
        "diversity": mean([diversity([j.image for j in case.methods[method]], case.masks) for case in cases]),
        "prompt_adherence": None,
        "seconds_per_case": mean([case.seconds[method] for case in cases]),
    }


def lambda_sweep(cases: list[Case]) -> list[dict]:
    return [
        {key: mean([case.sweep[index][key] for case in cases]) if key != "lambda" else weight
         for key in ("lambda", "identity_similarity", "non_face_similarity_to_reference", "seam")}
        for index, weight in enumerate(LAMBDAS)
    ]


def save_image(out: Path, name: str, image: np.ndarray) -> str:
    (out / "images").mkdir(exist_ok=True)
    (out / "images" / name).write_bytes(encode_png(image))
    return f"images/{name}"


def figure(out: Path, name: str, image: np.ndarray, caption: str) -> str:
    return (f'<figure><img src="{save_image(out, name, image)}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def score_text(judged: Judged) -> str:
    identity = "no face" if judged.identity_similarity is None else f"id {judged.identity_similarity:.2f}"
    return f"seed {judged.seed} · {identity} · non-face {judged.non_face_similarity_to_reference:.2f}"


def write_report(out: Path, cases: list[Case], summary: dict, profile: str, group: str = "") -> None:
    """A contact sheet: per reference and style, the reference, each method's images with their scores, the
    layout masks and the λ sweep; the summary table on top; ``group``: the group section, last."""
    rows = []
    for number, case in enumerate(cases):
        key = f"{number}-{case.face}-{case.style.replace('@', '-')}"
        cells = [f"<h2>{html.escape(case.face)} × {html.escape(case.style)}</h2><div class=row>",
                 figure(out, f"{key}-reference.png", case.reference, "reference"), "</div>"]
        for method, judged in case.methods.items():
            cells.append(f"<h3>{method}</h3><div class=row>")
            cells += [figure(out, f"{key}-{method}-{j.seed}.png", j.image, score_text(j)) for j in judged]
            cells.append("</div>")
        cells.append("<h3>layout masks</h3><div class=row>")
        cells += [figure(out, f"{key}-mask-{i}.png", (mask * 255).astype(np.uint8), f"seed {j.seed}")
                  for i, (mask, j) in enumerate(zip(case.masks, case.methods["blend"]))]
        cells.append("</div><h3>λ sweep (blend, first seed)</h3><div class=row>")
        cells += [figure(out, f"{key}-lambda-{p['lambda']}.png", p["image"],
                         f"λ {p['lambda']} · seam {p['seam']:.2f}") for p in case.sweep]
        rows.append("".join(cells) + "</div>")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ["method", *next(iter(summary.values()))])
    table = "".join(
        f"<tr><td>{method}</td>" + "".join(f"<td>{'—' if value is None else value}</td>" for value in figures.values())
        + "</tr>"
        for method, figures in summary.items()
    )
    (out / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>Portrait quality</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5rem}.row{display:flex;flex-wrap:wrap;gap:.5rem}"
        "figure{margin:0;width:160px}img{width:160px;image-rendering:pixelated}figcaption{font-size:.75rem}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25rem .5rem}"
        "img.plot{width:480px;image-rendering:auto}</style>"
        f"<h1>Portrait quality — {html.escape(profile)}</h1>"
        f"<table><tr>{header}</tr>{table}</table><p><img src=lambda_sweep.png alt='λ sweep' class=plot></p>"
        + "".join(rows) + group,
        encoding="utf-8",
    )


def plot_lambda_sweep(out: Path, sweep: list[dict]) -> None:
    figure_, axes = pyplot.subplots(figsize=(5, 3.2))
    for key, label in (("identity_similarity", "identity (dlib)"), ("non_face_similarity_to_reference",
                                                                    "non-face likeness to the render")):
        points = [(p["lambda"], p[key]) for p in sweep if p[key] is not None]
        if points:
            axes.plot(*zip(*points), marker="o", label=label)
    axes.set_xlabel("identity weight λ")
    axes.set_ylabel("similarity")
    axes.set_ylim(0, 1)
    axes.legend()
    figure_.tight_layout()
    figure_.savefig(out / "lambda_sweep.png", dpi=120)
    pyplot.close(figure_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="tiny", choices=PROFILES)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--faces", type=Path, nargs="*", default=[], help="reference images (default: the sample face)")
    parser.add_argument("--styles", nargs="*", default=None, help="style ids (default: every live style)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: each style's")
    parser.add_argument("--size", type=int, default=None, help="default: each style's")
    parser.add_argument("--styles-dir", default=str(REPO / "styles"))
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--group", action="store_true", help="add group portraits of 2 and 3 people (the first style)")
    parser.add_argument("--group-faces", type=Path, nargs="*", default=[],
                        help="3 different people for --group (default: the astronaut and two of a group photo)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()  # the tiny tokenizer's "truncated to 77 tokens", once per call

    models = load_models(ModelSettings(profile=args.profile, weights_dir=args.weights_dir))
    catalog = StyleCatalog(args.styles_dir)
    styles = [catalog.get(style) for style in args.styles] if args.styles else catalog.list()
    images = {path.stem: path.read_bytes() for path in args.faces} or {"sample_face": sample_face()}
    run = QualityRun(models, args.steps, args.size)
    started = time.perf_counter()
    faces = [run.face(name, image) for name, image in images.items()]
    cases = [run.case(face, style, args.seeds) for face in faces for style in styles]
    found = run.locality(faces[0], styles[0], args.seeds)
    groups = []
    if args.group:
        group_faces = {path.stem: path.read_bytes() for path in args.group_faces} or default_group_faces(models.faces)
        groups = run.group_cases(group_faces, styles[0], args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {method: method_summary(cases, method) for method in METHODS}
    sweep = lambda_sweep(cases)
    result = {
        "profile": args.profile,
        "judge": {
            "identity_similarity": run.judge.recognizer.name,
            "conditioning": models.identity_encoder.name,
            "ranker": models.recognizer.name,
        },
        "faces": [face.name for face in faces],
        "styles": [style.versioned_id for style in styles],
        "seeds": args.seeds,
        "methods": summary,
        "locality": found,
        "lambda_sweep": sweep,
        **({"group": [group_summary(case) for case in groups]} if groups else {}),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    plot_lambda_sweep(args.out, sweep)
    group = group_report(groups, lambda name, image, caption: figure(args.out, name, image, caption)) if groups else ""
    write_report(args.out, cases, summary, args.profile, group)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
