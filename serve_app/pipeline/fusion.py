"""Stage 4, the fusion ranker:

1. fuse the reference face into each candidate — insightface's inswapper onto the candidate's face in production,
   landmark-aligned seamless cloning otherwise (and where the candidate has no face and the layout mask says where
   it belongs);
2. check it is safe (see ``safety``);
3. score identity (see ``recognition``), rejecting broken faces and unsafe images;
4. keep the top K — always K, the shortfall filled with flagged rejects.

With several people, each person's reference goes onto their own face (left to right, else by their layout
masks), each face is scored against every reference, and a candidate is ranked by its worst person's score and
rejected where a face is more like another person's reference than its own (``identity_swap``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from serve_app.pipeline.faces import ARCFACE_TEMPLATE, DetectedFace, FaceAnalyzer, similarity
from serve_app.pipeline.masks import mask_box, to_image_resolution
from serve_app.pipeline.models import Models
from serve_app.pipeline.preprocess import Reference
from serve_app.pipeline.recognition import Recognizer
from serve_app.pipeline.safety import UNSAFE_CONTENT, SafetyChecker

if TYPE_CHECKING:
    from insightface.model_zoo.inswapper import INSwapper

PLACED_ON_FACE = "detected"
PLACED_BY_LAYOUT = "layout_mask"
IDENTITY_SWAP = "identity_swap"  # a face resembles another person's reference more than its own
# The face's extent on the 112² ArcFace template (jaw to forehead), used to place a face inside a mask box.
TEMPLATE_FACE_BOX = (18.0, 20.0, 94.0, 112.0)


@dataclass(frozen=True)
class Candidate:
    image: np.ndarray
    seed: int
    masks: np.ndarray  # the layout's face masks [P, h, w], one per person, at latent resolution


def make_candidates(images: Sequence[np.ndarray], seeds: Sequence[int], masks: torch.Tensor) -> list[Candidate]:
    """Pair the blend sampler's images with their seeds and layout masks ([N, P, h, w])."""
    return [
        Candidate(image=image, seed=seed, masks=mask.float().cpu().numpy())
        for image, seed, mask in zip(images, seeds, masks)
    ]


@dataclass(frozen=True)
class PlacedPerson:
    """One person in a portrait: their identity score, ``bleed`` (the best score of their face against any other
    person's reference; None alone), where their face was placed, and its five points (which the upscaler
    restores)."""

    identity_score: float
    bleed: float | None
    placement: str | None
    face_points: np.ndarray | None

    def scaled(self, scale: int) -> PlacedPerson:
        points = None if self.face_points is None else self.face_points * scale
        return dataclasses.replace(self, face_points=points)

    def face_box(self, image_side: int) -> tuple[float, float, float, float] | None:
        """Where their face is, as (x0, y0, x1, y1) in fractions of the portrait's side: a square twice the span of
        its five points around their centre (None where no face was found)."""
        if self.face_points is None:
            return None
        return tuple(round(edge / image_side, 4) for edge in face_region(self.face_points, image_side, reach=1.0))


@dataclass(frozen=True)
class RankedPortrait:
    """A scored candidate: ``identity_score`` is the worst person's; ``people`` left to right."""

    image: np.ndarray
    seed: int
    identity_score: float
    judge: str  # the recognizer that gave the scores
    people: tuple[PlacedPerson, ...]
    rejected: str | None
    masks: np.ndarray  # the candidate's layout masks [P, h, w], at latent resolution

    @property
    def accepted(self) -> bool:
        return self.rejected is None

    @property
    def placement(self) -> str | None:
        """'layout_mask' if any face was placed by its layout mask, else 'detected' (None: nothing placed)."""
        placements = {person.placement for person in self.people}
        return None if None in placements else PLACED_BY_LAYOUT if PLACED_BY_LAYOUT in placements else PLACED_ON_FACE

    @property
    def faces_points(self) -> list[np.ndarray]:
        return [person.face_points for person in self.people if person.face_points is not None]


def usable_faces(faces: list[DetectedFace], people: int) -> tuple[list[DetectedFace], str | None]:
    """The faces to fuse into (up to ``people``), or why the candidate is broken. Fewer faces is not broken: the
    layout masks say where the missing ones belong."""
    if len(faces) > people:
        return [], "several_faces"
    if not all(face.is_frontal() for face in faces):
        return [], "extreme_pose"
    return faces, None


def usable_face(faces: list[DetectedFace]) -> tuple[DetectedFace | None, str | None]:
    """The one face of a single-person region, or why it is broken (no face: neither)."""
    found, broken = usable_faces(faces, 1)
    return (found[0] if found else None), broken


def assign_faces(faces: Sequence[DetectedFace], masks: np.ndarray, side: int) -> list[DetectedFace | None]:
    """Each person's face in a ``side``² image: left to right when every person has one, else each face to the
    person whose mask weighs most at its centre (one face per person); None where a person has none."""
    people = len(masks)
    if len(faces) == people:
        return sorted(faces, key=lambda face: face.box[0] + face.box[2])
    weights = [(mask_at(mask, face.box, side), f, p) for f, face in enumerate(faces) for p, mask in enumerate(masks)]
    assigned: list[DetectedFace | None] = [None] * people
    taken: set[int] = set()
    for _, face, person in sorted(weights, reverse=True):
        if assigned[person] is None and face not in taken:
            assigned[person] = faces[face]
            taken.add(face)
    return assigned


def mask_at(mask: np.ndarray, box: tuple[float, float, float, float], side: int) -> float:
    """A latent-resolution mask's weight at the centre of a box in a ``side``² image."""
    latent_side = mask.shape[-1]
    x, y = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    column, row = (min(int(v * latent_side / side), latent_side - 1) for v in (x, y))
    return float(mask[row, column])


def points_in_box(box: tuple[float, float, float, float]) -> np.ndarray:
    """The five template points placed so the template's face fills ``box`` (uniform scale, centred)."""
    fx0, fy0, fx1, fy1 = TEMPLATE_FACE_BOX
    x0, y0, x1, y1 = box
    scale = min((x1 - x0) / (fx1 - fx0), (y1 - y0) / (fy1 - fy0))
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2], np.float32)
    template_centre = np.array([(fx0 + fx1) / 2, (fy0 + fy1) / 2], np.float32)
    return (ARCFACE_TEMPLATE - template_centre) * scale + centre


def fuse_face(
    target: np.ndarray,
    target_points: np.ndarray,
    source: np.ndarray,
    source_points: np.ndarray,
    source_mask: np.ndarray,
) -> np.ndarray:
    """Warp ``source`` so its five points land on ``target_points`` and Poisson-blend its masked face in."""
    height, width = target.shape[:2]
    matrix = similarity(source_points, target_points)
    warped = cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    mask = cv2.warpAffine(source_mask, matrix, (width, height), flags=cv2.INTER_LINEAR)
    mask = (mask > 0.5).astype(np.uint8)
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:] = 0, 0, 0, 0
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8))
    box = mask_box(mask)
    if box is None or box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return target
    x0, y0, x1, y1 = (int(v) for v in box)
    # seamlessClone centres the mask's bounding box on ``centre``: this centre keeps the face where it was warped.
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    return cv2.seamlessClone(warped, target, mask * 255, centre, cv2.NORMAL_CLONE)


def rank_key(portrait: RankedPortrait) -> tuple[bool, bool, float]:
    """Accepted first, then the other rejects (still portraits), blacked-out unsafe ones last; by the worst
    person's score within."""
    return portrait.accepted, portrait.rejected != UNSAFE_CONTENT, portrait.identity_score


@dataclass(frozen=True)
class Fused:
    """A candidate after fusion: the image, per person how the face was placed and the region to look for it, or
    why the candidate is broken (no people then)."""

    image: np.ndarray
    placements: tuple[str, ...]
    regions: tuple[tuple[float, float, float, float], ...]
    broken: str | None


def face_region(points: np.ndarray, image_side: int, reach: float = 1.6) -> tuple[float, float, float, float]:
    """Where a face with these five points lies: a square of ``reach`` × their span around their centre."""
    centre = (points.min(0) + points.max(0)) / 2
    half = reach * float((points.max(0) - points.min(0)).max())
    x0, y0 = np.clip(centre - half, 0, image_side)
    x1, y1 = np.clip(centre + half, 0, image_side)
    return float(x0), float(y0), float(x1), float(y1)


def nearest_face(faces: Sequence[DetectedFace], region: tuple[float, float, float, float]) -> list[DetectedFace]:
    """Of the faces found in a group member's region (a neighbour's may reach into it), the one nearest its centre."""
    if len(faces) <= 1:
        return list(faces)
    centre = np.array([(region[0] + region[2]) / 2, (region[1] + region[3]) / 2])
    return [min(faces, key=lambda face: float(np.linalg.norm(face.five_points.mean(0) - centre)))]


def swap_face(swapper: INSwapper, image: np.ndarray, face: DetectedFace, embedding: np.ndarray) -> np.ndarray:
    """inswapper: the identity ``embedding`` (ArcFace) onto ``face``, pasted back into ``image``."""
    from insightface.app.common import Face  # production only: the commercial profiles never import insightface

    target, source = Face(kps=face.five_points, bbox=np.array(face.box)), Face(embedding=embedding)
    swapped = swapper.get(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), target, source, paste_back=True)
    return cv2.cvtColor(swapped, cv2.COLOR_BGR2RGB)


class FusionRanker:
    def __init__(
        self, faces: FaceAnalyzer, recognizer: Recognizer, safety: SafetyChecker, swapper: INSwapper | None = None
    ) -> None:
        self.faces, self.recognizer, self.safety, self.swapper = faces, recognizer, safety, swapper

    @classmethod
    def of(cls, models: Models) -> FusionRanker:
        return cls(models.faces, models.recognizer, models.safety_checker, models.face_swapper)

    def find(
        self, image: np.ndarray, region: tuple[float, float, float, float] | None = None, people: int = 1
    ) -> tuple[DetectedFace | None, str | None]:
        """The face in ``image`` (within ``region`` if given) of one of ``people`` people, or why there is none."""
        found = self.faces.detect_generated(image, region, people)
        face, broken = usable_face(found if people == 1 or region is None else nearest_face(found, region))
        return (None, broken or "no_face") if face is None else (face, None)

    def score(
        self, image: np.ndarray, descriptor: np.ndarray, region: tuple[float, float, float, float] | None = None
    ) -> tuple[float, DetectedFace | None, str | None]:
        """Identity score of the face in ``image`` (within ``region`` if given) against a reference descriptor,
        with the face, or the reason there is none."""
        face, broken = self.find(image, region)
        if face is None:
            return 0.0, None, broken
        return self.recognizer.similarity(self.recognizer.describe(image, face), descriptor), face, None

    def fuse(self, candidate: Candidate, references: Sequence[Reference]) -> Fused:
        """Fuse each person's reference face onto their face in the candidate, or where their layout mask puts it
        if the sampler drew none for them."""
        people, side = len(references), candidate.image.shape[0]
        found, broken = usable_faces(self.faces.detect_generated(candidate.image, people=people), people)
        if broken is not None:
            return Fused(candidate.image, (), (), broken)
        image, placements, regions = candidate.image, [], []
        for reference, face, mask in zip(references, assign_faces(found, candidate.masks, side), candidate.masks):
            placed = self.fuse_person(image, reference, face, mask)
            if placed is None:
                return Fused(candidate.image, (), (), "no_face")
            image, placement, region = placed
            placements.append(placement)
            regions.append(region)
        return Fused(image, tuple(placements), tuple(regions), None)

    def fuse_person(
        self, image: np.ndarray, reference: Reference, face: DetectedFace | None, mask: np.ndarray
    ) -> tuple[np.ndarray, str, tuple[float, float, float, float]] | None:
        """One person's reference face fused onto ``face``, or into their layout mask's box (None: it is empty)."""
        side = image.shape[0]
        if face is not None and self.swapper is not None:
            swapped = swap_face(self.swapper, image, face, reference.identity_embedding)
            return swapped, PLACED_ON_FACE, face_region(face.five_points, side)
        if face is not None:
            target_points, placement = face.five_points, PLACED_ON_FACE
        else:
            box = mask_box(to_image_resolution(mask, side))
            if box is None:
                return None
            target_points, placement = points_in_box(box), PLACED_BY_LAYOUT
        aligned = reference.aligned_face
        source_points = ARCFACE_TEMPLATE * (aligned.shape[0] / 112.0)
        fused = fuse_face(image, target_points, aligned, source_points, reference.aligned_mask)
        return fused, placement, face_region(target_points, side)

    def checked(self, fused: list[Fused]) -> list[Fused]:
        """Every fused image through the safety check: flagged ones are blacked out and rejected."""
        unsafe = self.safety.flags([f.image for f in fused])
        return [Fused(np.zeros_like(f.image), (), (), UNSAFE_CONTENT) if bad else f for f, bad in zip(fused, unsafe)]

    def rank(
        self, candidates: list[Candidate], references: Sequence[Reference], top_k: int
    ) -> list[RankedPortrait]:
        """Fuse, safety-check, score and sort every candidate; the best ``top_k``."""
        # 1. Fuse each person's reference face into every candidate
        fused = [self.fuse(candidate, references) for candidate in candidates]
        # 2. Check they are safe (flagged ones are blacked out and rejected)
        checked = self.checked(fused)
        # 3. Score each person's identity, rejecting broken faces, swapped identities and unsafe images
        descriptors = [reference.recognition_descriptor for reference in references]
        portraits = [self.scored(c, f, descriptors) for c, f in zip(candidates, checked)]
        # 4. Keep the top K by the worst person's score, rejects filling any shortfall
        return sorted(portraits, key=rank_key, reverse=True)[:top_k]

    def scored(self, candidate: Candidate, fused: Fused, descriptors: Sequence[np.ndarray]) -> RankedPortrait:
        """The portrait of a fused candidate with each person's scores (its own: the worst person's), or rejected
        with why: a broken or missing face (score 0), or a face more like another person's reference than its own
        (identity_swap, scores kept)."""
        people, reasons = zip(*(self.placed_person(fused, i, descriptors) for i in range(len(descriptors))))
        rejected = fused.broken or next((reason for reason in reasons if reason is not None), None)
        if rejected is None and any(p.bleed is not None and p.bleed > p.identity_score for p in people):
            rejected = IDENTITY_SWAP
        return RankedPortrait(
            image=fused.image,
            seed=candidate.seed,
            identity_score=min(p.identity_score for p in people) if rejected in (None, IDENTITY_SWAP) else 0.0,
            judge=self.recognizer.name,
            people=people,
            rejected=rejected,
            masks=candidate.masks,
        )

    def placed_person(
        self, fused: Fused, person: int, descriptors: Sequence[np.ndarray]
    ) -> tuple[PlacedPerson, str | None]:
        """Person ``person``'s scores in a fused image: against their own reference and, for bleed, the others'
        (none for a broken candidate, with no reason of its own)."""
        alone = len(descriptors) == 1
        if fused.broken is not None:
            return PlacedPerson(0.0, None if alone else 0.0, None, None), None
        placement = fused.placements[person]
        face, broken = self.find(fused.image, fused.regions[person], len(descriptors))
        if face is None:
            return PlacedPerson(0.0, None if alone else 0.0, placement, None), broken
        descriptor = self.recognizer.describe(fused.image, face)
        scores = [self.recognizer.similarity(descriptor, reference) for reference in descriptors]
        bleed = None if alone else max(score for j, score in enumerate(scores) if j != person)
        return PlacedPerson(scores[person], bleed, placement, face.five_points), None
