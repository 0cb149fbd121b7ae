"""Group portraits in the quality harness (``bench/quality.py --group``): for P = 2 and 3 different people, the
service's whole pipeline in process, judged per person.

- ``similarity``: the matrix S[i][j] of person i's face in the portrait against person j's reference, by the
  independent judge (dlib's ResNet; 1 identical, 0.5 at its same-person distance), averaged over the portraits;
  per person ``bleed = max_{j≠i} S[i][j]`` and ``margin = S[i][i] − bleed`` (a row is left out where the judge
  finds no face near where the ranker placed person i);
- ``identity_swaps``: portraits where some face is more like another person's reference than its own;
- ``locality`` (``serve_app.pipeline.baselines.person_locality``): person i's effect on the final latents outside
  their own mask, and inside the others' masks, as a share of it inside their own (the structural property).

What means something on the tiny profile: ``locality`` (it needs no real weights) and the similarity matrix as a
check of *fusion*: the real reference faces are pasted into random-weight candidates, so S says whether each
person's face went to their own place and stayed apart from the others; what the sampler itself drew of each
identity shows only with real weights (``--profile production``).
"""

from __future__ import annotations

import dataclasses
import html
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import cv2
import numpy as np
import skimage.data
from PIL import Image

from serve_app.pipeline.baselines import person_locality
from serve_app.pipeline.faces import FaceAnalyzer
from serve_app.pipeline.fusion import IDENTITY_SWAP, RankedPortrait, face_region, nearest_face
from serve_app.pipeline.images import encode_png
from serve_app.pipeline.masks import to_image_resolution
from serve_app.pipeline.portrait import PortraitPipeline, face_prior_ellipses
from serve_app.pipeline.recognition import DlibRecognizer
from serve_app.portrait_request import portrait_request
from serve_app.schemas import PortraitOptions
from serve_app.styles.folder import Style

GROUP_SIZES = (2, 3)
# Each person's colour on the contact sheet (RGB), left to right.
PERSON_COLOURS = ((230, 60, 60), (60, 170, 230), (90, 200, 90), (240, 200, 40))


def group_photo() -> np.ndarray:
    """insightface's group photo of six people (shipped inside the package)."""
    return np.asarray(Image.open(resources.files("insightface") / "data" / "images" / "t1.jpg").convert("RGB"))


def face_crops(
    image: np.ndarray, faces: FaceAnalyzer, count: int, reach: float = 1.6, side: int = 256
) -> list[np.ndarray]:
    """The ``count`` largest faces of a photo, left to right, each as a square crop ``reach`` × its width around
    it (the photo's edges replicated where the square overruns them), ``side`` pixels."""
    crops = []
    for face in sorted(faces.detect(image)[:count], key=lambda face: face.box[0]):
        x0, y0, x1, y1 = face.box
        half = int(reach * (x1 - x0))
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        padded = cv2.copyMakeBorder(image, half, half, half, half, cv2.BORDER_REPLICATE)
        square = padded[cy : cy + 2 * half, cx : cx + 2 * half]
        crops.append(cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA))
    return crops


def default_group_faces(faces: FaceAnalyzer) -> dict[str, bytes]:
    """Three different real people: the astronaut and the first and third (left to right) of the group photo's
    six (dlib scores them 0.34-0.42 alike)."""
    crops = face_crops(group_photo(), faces, 6)
    found = {"astronaut": skimage.data.astronaut(), "group-photo-1": crops[0], "group-photo-3": crops[2]}
    return {name: encode_png(image) for name, image in found.items()}


@dataclass
class GroupCase:
    """P people in one style: the portraits (every candidate, ranked), each one's S matrix, the locality."""

    people: list[str]
    style: str
    portraits: list[RankedPortrait]
    matrices: list[list[list[float] | None]]
    locality: list[dict[str, float]]


class GroupJudge:
    """S[i][j] of a group portrait by dlib, independent of the ranker's recognizer."""

    def __init__(self, recognizer: DlibRecognizer) -> None:
        self.recognizer = recognizer

    def matrix(self, portrait: RankedPortrait, references: Sequence[np.ndarray]) -> list[list[float] | None]:
        return [self.row(portrait.image, person.face_points, references) for person in portrait.people]

    def row(
        self, image: np.ndarray, points: np.ndarray | None, references: Sequence[np.ndarray]
    ) -> list[float] | None:
        if points is None:
            return None
        region = face_region(points, image.shape[0])
        found = self.recognizer.faces.detect(image, fallbacks=False, region=region)
        if not found:
            return None
        [face] = nearest_face(found, region)
        descriptor = self.recognizer.describe(image, face)
        return [round(self.recognizer.similarity(descriptor, reference), 4) for reference in references]


def group_case(
    pipeline: PortraitPipeline,
    judge: GroupJudge,
    faces: dict[str, bytes],
    references: dict[str, np.ndarray],
    style: Style,
    seeds: list[int],
    options: dict,
) -> GroupCase:
    """Every candidate of one group request (top K = N, no upscaling), judged, and the request's locality."""
    names = list(faces)
    request = portrait_request(
        PortraitOptions(style=style.versioned_id, seed=seeds[0], num_candidates=len(seeds), top_k=len(seeds),
                        upscale=1, **options),
        style.manifest, seeds[0], len(names),
    )
    run = pipeline.generate([faces[name] for name in names], request, style.read_lora)
    matrices = [judge.matrix(portrait, [references[name] for name in names]) for portrait in run.portraits]
    with pipeline.adapters.active(request.lora.key, request.lora.scale):
        found = person_locality(pipeline.models.diffusion, pipeline.models.faces, run.plan,
                                face_prior_ellipses(request.face_priors, run.plan.size))
    locality = [{key: round(value, 4) for key, value in dataclasses.asdict(person).items()} for person in found]
    return GroupCase(names, style.versioned_id, run.portraits, matrices, locality)


def group_summary(case: GroupCase) -> dict:
    people = len(case.people)
    rows = [[matrix[i] for matrix in case.matrices if matrix[i] is not None] for i in range(people)]
    mean_matrix = [
        [round(statistics.fmean(row[j] for row in person_rows), 4) if person_rows else None for j in range(people)]
        for person_rows in rows
    ]
    bleeds = [max(row[j] for j in range(people) if j != i) for i in range(people) for row in rows[i]]
    margins = [row[i] - max(row[j] for j in range(people) if j != i) for i in range(people) for row in rows[i]]
    return {
        "people": case.people,
        "style": case.style,
        "portraits": len(case.portraits),
        "faces_judged": round(sum(map(len, rows)) / (people * len(case.portraits)), 4),
        "similarity": mean_matrix,
        "bleed": round(statistics.fmean(bleeds), 4) if bleeds else None,
        "margin": round(statistics.fmean(margins), 4) if margins else None,
        "identity_swaps": sum(portrait.rejected == IDENTITY_SWAP for portrait in case.portraits),
        "locality": case.locality,
    }


def with_masks_drawn(portrait: RankedPortrait) -> np.ndarray:
    """The portrait with each person's layout mask outlined (M = 0.5) in their colour."""
    image = portrait.image.copy()
    for mask, colour in zip(portrait.masks, PERSON_COLOURS):
        region = (to_image_resolution(mask, image.shape[0]) > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, colour, 1)
    return image


def group_report(cases: list[GroupCase], figure: Callable[[str, np.ndarray, str], str]) -> str:
    """The contact sheet's group section: per case, each portrait with its masks drawn and its S matrix."""
    parts = ["<h2>Group portraits</h2><p>Masks outlined per person, left to right: "
             + ", ".join(f"<span style='color:rgb{colour}'>person {i + 1}</span>"
                         for i, colour in enumerate(PERSON_COLOURS)) + ".</p>"]
    for number, case in enumerate(cases):
        parts.append(f"<h3>{html.escape(' + '.join(case.people))} × {html.escape(case.style)}</h3><div class=row>")
        for portrait, matrix in zip(case.portraits, case.matrices):
            rows = "; ".join("—" if row is None else " ".join(f"{s:.2f}" for s in row) for row in matrix)
            caption = f"seed {portrait.seed} · S [{rows}] · {portrait.rejected or 'accepted'}"
            parts.append(figure(f"group-{number}-{portrait.seed}.png", with_masks_drawn(portrait), caption))
        parts.append("</div>")
    return "".join(parts)
