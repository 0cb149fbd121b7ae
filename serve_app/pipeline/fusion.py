"""Stage 4, the fusion ranker:

1. fuse the reference face into each candidate — insightface's inswapper onto the candidate's face in production,
   landmark-aligned seamless cloning otherwise (and where the candidate has no face and the layout mask says where
   it belongs);
2. check it is safe (see ``safety``);
3. score identity (see ``recognition``), rejecting broken faces and unsafe images;
4. keep the top K — always K, the shortfall filled with flagged rejects.
"""

from __future__ import annotations

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
# The face's extent on the 112² ArcFace template (jaw to forehead), used to place a face inside a mask box.
TEMPLATE_FACE_BOX = (18.0, 20.0, 94.0, 112.0)


@dataclass(frozen=True)
class Candidate:
    image: np.ndarray
    seed: int
    mask: np.ndarray


def make_candidates(images: Sequence[np.ndarray], seeds: Sequence[int], masks: torch.Tensor) -> list[Candidate]:
    """Pair the blend sampler's images with their seeds and layout masks ([N, 1, h, w])."""
    return [
        Candidate(image=image, seed=seed, mask=mask[0].float().cpu().numpy()) for image, seed, mask in zip(images, seeds, masks)
    ]


@dataclass(frozen=True)
class RankedPortrait:
    image: np.ndarray
    seed: int
    identity_score: float
    judge: str  # the recognizer that gave identity_score
    face_points: np.ndarray | None  # the five points of the fused face, which the upscaler restores
    placement: str | None
    rejected: str | None
    mask: np.ndarray  # the candidate's layout mask, at latent resolution

    @property
    def accepted(self) -> bool:
        return self.rejected is None


def usable_face(faces: list[DetectedFace]) -> tuple[DetectedFace | None, str | None]:
    """The one face to fuse into, or why the candidate is broken. No face at all is not broken: the layout
    mask says where the face belongs."""
    if len(faces) > 1:
        return None, "several_faces"
    if faces and not faces[0].is_frontal():
        return None, "extreme_pose"
    return (faces[0] if faces else None), None


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
    """Accepted first, then the other rejects (still portraits), blacked-out unsafe ones last; by score within."""
    return portrait.accepted, portrait.rejected != UNSAFE_CONTENT, portrait.identity_score


@dataclass(frozen=True)
class Fused:
    """A candidate after fusion: the image, how the face was placed, the region to look for it, or why broken."""

    image: np.ndarray
    placement: str | None
    region: tuple[float, float, float, float] | None
    broken: str | None


def face_region(points: np.ndarray, image_side: int, reach: float = 1.6) -> tuple[float, float, float, float]:
    """Where a face with these five points lies: a square of ``reach`` × their span around their centre."""
    centre = (points.min(0) + points.max(0)) / 2
    half = reach * float((points.max(0) - points.min(0)).max())
    x0, y0 = np.clip(centre - half, 0, image_side)
    x1, y1 = np.clip(centre + half, 0, image_side)
    return float(x0), float(y0), float(x1), float(y1)


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

    def score(
        self, image: np.ndarray, descriptor: np.ndarray, region: tuple[float, float, float, float] | None = None
    ) -> tuple[float, DetectedFace | None, str | None]:
        """Identity score of the face in ``image`` (within ``region`` if given) against a reference descriptor,
        with the face, or the reason there is none."""
        face, broken = usable_face(self.faces.detect_generated(image, region))
        if broken is not None:
            return 0.0, None, broken
        if face is None:
            return 0.0, None, "no_face"
        return self.recognizer.similarity(self.recognizer.describe(image, face), descriptor), face, None

    def fuse(self, candidate: Candidate, reference: Reference) -> Fused:
        """Fuse the reference face onto the candidate's face, or where the layout mask puts it if it has none."""
        face, broken = usable_face(self.faces.detect_generated(candidate.image))
        if broken is not None:
            return Fused(candidate.image, None, None, broken)
        side = candidate.image.shape[0]
        if face is not None and self.swapper is not None:
            image = swap_face(self.swapper, candidate.image, face, reference.identity_embedding)
            return Fused(image, PLACED_ON_FACE, face_region(face.five_points, side), None)
        if face is not None:
            target_points, placement = face.five_points, PLACED_ON_FACE
        else:
            box = mask_box(to_image_resolution(candidate.mask, side))
            if box is None:
                return Fused(candidate.image, None, None, "no_face")
            target_points, placement = points_in_box(box), PLACED_BY_LAYOUT
        aligned = reference.aligned_face
        source_points = ARCFACE_TEMPLATE * (aligned.shape[0] / 112.0)
        image = fuse_face(candidate.image, target_points, aligned, source_points, reference.aligned_mask)
        return Fused(image, placement, face_region(target_points, side), None)

    def checked(self, fused: list[Fused]) -> list[Fused]:
        """Every fused image through the safety check: flagged ones are blacked out and rejected."""
        unsafe = self.safety.flags([f.image for f in fused])
        return [Fused(np.zeros_like(f.image), None, None, UNSAFE_CONTENT) if bad else f for f, bad in zip(fused, unsafe)]

    def rank(self, candidates: list[Candidate], reference: Reference, top_k: int) -> list[RankedPortrait]:
        """Fuse, safety-check, score and sort every candidate; the best ``top_k``."""
        # 1. Fuse the reference face into every candidate
        fused = [self.fuse(candidate, reference) for candidate in candidates]
        # 2. Check they are safe (flagged ones are blacked out and rejected)
        checked = self.checked(fused)
        # 3. Score identity, rejecting broken faces and unsafe images
        portraits = [self.scored(c, f, reference.recognition_descriptor) for c, f in zip(candidates, checked)]
        # 4. Keep the top K, rejects filling any shortfall
        return sorted(portraits, key=rank_key, reverse=True)[:top_k]

    def scored(self, candidate: Candidate, fused: Fused, descriptor: np.ndarray) -> RankedPortrait:
        """The portrait of a fused candidate with its identity score, or rejected with why (score 0)."""
        score, face, rejected = (
            self.score(fused.image, descriptor, fused.region) if fused.broken is None else (0.0, None, fused.broken)
        )
        return RankedPortrait(
            image=fused.image,
            seed=candidate.seed,
            identity_score=score,
            judge=self.recognizer.name,
            face_points=face.five_points if face else None,
            placement=fused.placement,
            rejected=rejected,
            mask=candidate.mask,
        )
