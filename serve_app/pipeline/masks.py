"""Soft face-region masks: an ellipse around a face (or the style's prior ellipse), grown, feathered and
resampled to latent resolution. Masks are float32 in [0, 1]; image masks are [H, W], latent masks [h, w]."""

from __future__ import annotations

import cv2
import numpy as np

from serve_app.pipeline.beautify import feather
from serve_app.pipeline.faces import DetectedFace, similarity_to_template

Ellipse = tuple[tuple[float, float], tuple[float, float]]
"""((centre x, centre y), (radius x, radius y)) in pixels."""

MASK_GROWTH = 1.25
# A face's outline on the 112² ArcFace template: ear to ear, chin to the top of the forehead (dlib's jaw line and
# lifted brows fit inside).
TEMPLATE_OUTLINE_BOX = (18.0, 14.0, 94.0, 116.0)
FEATHER_FRACTION = 0.2


def face_ellipse(face: DetectedFace) -> Ellipse:
    """The ellipse bounding a face (jaw to forehead, ear to ear): the template's outline box carried onto the face
    by the similarity of its five points (so any detector's five points will do)."""
    to_face = cv2.invertAffineTransform(similarity_to_template(face.five_points, 112))
    fx0, fy0, fx1, fy1 = TEMPLATE_OUTLINE_BOX
    centre = to_face @ np.array([(fx0 + fx1) / 2, (fy0 + fy1) / 2, 1.0])
    scale = float(np.sqrt(abs(np.linalg.det(to_face[:, :2]))))
    return (float(centre[0]), float(centre[1])), ((fx1 - fx0) / 2 * scale, (fy1 - fy0) / 2 * scale)


def prior_ellipse(size: int, center: tuple[float, float], radii: tuple[float, float]) -> Ellipse:
    """A style's prior ellipse, given in fractions of the image side, in pixels."""
    return (center[0] * size, center[1] * size), (radii[0] * size, radii[1] * size)


def soft_ellipse_mask(size: int, ellipse: Ellipse) -> np.ndarray:
    """A filled ellipse grown by MASK_GROWTH and feathered over FEATHER_FRACTION of its mean radius, so the
    face itself stays at full weight and the identity fades out around it."""
    (cx, cy), (rx, ry) = ellipse
    mask = np.zeros((size, size), np.float32)
    axes = (max(1, round(rx * MASK_GROWTH)), max(1, round(ry * MASK_GROWTH)))
    cv2.ellipse(mask, (round(cx), round(cy)), axes, 0, 0, 360, 1.0, -1)
    return np.clip(feather(mask, FEATHER_FRACTION * (rx + ry) / 2), 0.0, 1.0)


def to_latent_resolution(mask: np.ndarray, latent_side: int) -> np.ndarray:
    return cv2.resize(mask, (latent_side, latent_side), interpolation=cv2.INTER_AREA)


def to_image_resolution(mask: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(mask, (side, side), interpolation=cv2.INTER_LINEAR)


def mask_image(mask: np.ndarray, side: int) -> np.ndarray:
    """A soft mask as a greyscale uint8 image of ``side`` pixels: 0 outside, 255 at full weight."""
    return np.round(np.clip(to_image_resolution(mask, side), 0.0, 1.0) * 255).astype(np.uint8)


def mask_box(mask: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of the mask's region above ``threshold``, or None if it is empty."""
    ys, xs = np.nonzero(mask > threshold)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
