"""Skin beautification: edge-preserving smoothing with frequency separation, confined to a feathered skin mask."""

from __future__ import annotations

import cv2
import numpy as np


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Soften a [0, 1] mask's edge with a Gaussian of about ``radius`` pixels."""
    if radius <= 0:
        return mask.astype(np.float32)
    sigma = max(radius / 2.0, 0.5)
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def smooth_skin(image: np.ndarray, skin: np.ndarray, face_width: float, strength: float = 0.85) -> np.ndarray:
    """Remove freckles and blemishes on skin while keeping its fine texture a little.

    The low-frequency layer comes from three bilateral passes (edges such as the jaw line survive); the
    high-frequency layer (image minus that) is put back at a quarter amplitude. The result is blended
    in through the feathered skin mask eroded by the feather radius, so pixels off the skin stay untouched.
    """
    radius = max(1.0, face_width / 40.0)
    source = image.astype(np.float32)
    low = source
    for _ in range(3):
        low = cv2.bilateralFilter(low, d=int(3 * radius) | 1, sigmaColor=50.0, sigmaSpace=radius * 2)
    smoothed = low + 0.25 * (source - low)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(2 * radius) | 1, int(2 * radius) | 1))
    inner = cv2.erode(skin.astype(np.uint8), kernel)
    weight = (strength * feather(inner, radius) * skin)[..., None]
    return np.clip(source * (1 - weight) + smoothed * weight, 0, 255).astype(np.uint8)
