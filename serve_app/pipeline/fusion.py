"""Stage 4, the fusion ranker: fuse the reference face into each candidate (landmark-aligned seamless cloning),
score identity with an independent recognizer (dlib's ResNet, not the ArcFace that conditioned the sampler),
reject broken faces and keep the top K — always K, the shortfall filled with flagged rejects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from serve_app.pipeline.faces import ARCFACE_TEMPLATE, DetectedFace, FaceAnalyzer
from serve_app.pipeline.masks import mask_box, to_image_resolution

PLACED_ON_FACE = "detected"
PLACED_BY_LAYOUT = "layout_mask"
SAME_PERSON_DISTANCE = 0.6
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
        Candidate(image=image, seed=seed, mask=mask[0].cpu().numpy()) for image, seed, mask in zip(images, seeds, masks)
    ]


@dataclass(frozen=True)
class RankedPortrait:
    image: np.ndarray
    seed: int
    identity_score: float
    face_box: tuple[float, float, float, float] | None
    placement: str | None
    rejected: str | None

    @property
    def accepted(self) -> bool:
        return self.rejected is None


def identity_score(distance: float) -> float:
    """Map a dlib descriptor distance to [0, 1]: 1 identical, 0.5 at the same-person threshold, 0 beyond 2×."""
    return float(np.clip(1.0 - distance / (2 * SAME_PERSON_DISTANCE), 0.0, 1.0))


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
    matrix, _ = cv2.estimateAffinePartial2D(source_points, target_points, method=cv2.LMEDS)
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


class FusionRanker:
    def __init__(self, faces: FaceAnalyzer) -> None:
        self.faces = faces

    def reference_descriptor(self, aligned_face: np.ndarray) -> np.ndarray:
        found = self.faces.detect(aligned_face)
        if not found:
            raise ValueError("the independent recognizer finds no face in the aligned reference")
        return self.faces.describe(aligned_face, found[0])

    def score(self, image: np.ndarray, reference: np.ndarray) -> tuple[float, DetectedFace | None, str | None]:
        """Identity score of the face in ``image`` against a reference descriptor, the face, or why none."""
        face, broken = usable_face(self.faces.detect(image))
        if broken is not None:
            return 0.0, None, broken
        if face is None:
            return 0.0, None, "no_face"
        distance = float(np.linalg.norm(self.faces.describe(image, face) - reference))
        return identity_score(distance), face, None

    def fuse(self, candidate: Candidate, aligned_face: np.ndarray, aligned_mask: np.ndarray) -> tuple[np.ndarray, str | None, str | None]:
        """The candidate with the reference fused in, how the face was placed, and why it is broken (or None)."""
        face, broken = usable_face(self.faces.detect(candidate.image))
        if broken is not None:
            return candidate.image, None, broken
        side = candidate.image.shape[0]
        if face is not None:
            target_points, placement = face.five_points, PLACED_ON_FACE
        else:
            box = mask_box(to_image_resolution(candidate.mask, side))
            if box is None:
                return candidate.image, None, "no_face"
            target_points, placement = points_in_box(box), PLACED_BY_LAYOUT
        source_points = ARCFACE_TEMPLATE * (aligned_face.shape[0] / 112.0)
        fused = fuse_face(candidate.image, target_points, aligned_face, source_points, aligned_mask)
        return fused, placement, None

    def rank(
        self,
        candidates: list[Candidate],
        aligned_face: np.ndarray,
        aligned_mask: np.ndarray,
        top_k: int,
    ) -> list[RankedPortrait]:
        reference = self.reference_descriptor(aligned_face)
        portraits = []
        for candidate in candidates:
            fused, placement, broken = self.fuse(candidate, aligned_face, aligned_mask)
            score, face, unscored = self.score(fused, reference) if broken is None else (0.0, None, broken)
            portraits.append(
                RankedPortrait(
                    image=fused,
                    seed=candidate.seed,
                    identity_score=score,
                    face_box=face.box if face else None,
                    placement=placement,
                    rejected=unscored,
                )
            )
        return sorted(portraits, key=lambda p: (p.accepted, p.identity_score), reverse=True)[:top_k]
