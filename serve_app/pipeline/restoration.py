"""Face restoration and the feathered paste-back shared by the preprocessor and the upscaler."""

from __future__ import annotations

import threading
from typing import Protocol

import cv2
import numpy as np
from spandrel import ImageModelDescriptor

from serve_app.pipeline.beautify import feather
from serve_app.pipeline.image_models import run_image_model


class FaceRestorer(Protocol):
    def restore(self, face: np.ndarray) -> np.ndarray:
        """Restore an RGB face crop; returns an image of the same size."""


class ClassicalFaceRestorer:
    """The tiny profile's restorer: non-local-means denoising (softens render artefacts and decals), CLAHE on
    lightness (photo-like local contrast) and a light unsharp mask. Production uses GFPGAN/CodeFormer."""

    def restore(self, face: np.ndarray) -> np.ndarray:
        denoised = cv2.fastNlMeansDenoisingColored(face, None, 5, 5, 5, 15)
        lab = cv2.cvtColor(denoised, cv2.COLOR_RGB2LAB)
        lab[..., 0] = cv2.createCLAHE(clipLimit=1.5, tileGridSize=(4, 4)).apply(lab[..., 0])
        contrasted = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        blurred = cv2.GaussianBlur(contrasted, (0, 0), 1.5)
        return cv2.addWeighted(contrasted, 1.4, blurred, -0.4, 0)


class NetworkFaceRestorer:
    """GFPGAN (or CodeFormer) through spandrel: the crop is resized to the network's square input (512² for
    GFPGAN), restored in [-1, 1] as GFPGAN was trained, and resized back. One forward pass at a time."""

    def __init__(self, model: ImageModelDescriptor) -> None:
        self.model = model
        self.side = max(model.size_requirements.minimum, 512)
        self._lock = threading.Lock()

    def restore(self, face: np.ndarray) -> np.ndarray:
        height, width = face.shape[:2]
        square = cv2.resize(face, (self.side, self.side), interpolation=cv2.INTER_CUBIC)
        with self._lock:
            restored = run_image_model(self.model, square, value_range=(-1, 1))
        return cv2.resize(restored, (width, height), interpolation=cv2.INTER_AREA)


def restore_region(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    restorer: FaceRestorer,
    strength: float,
) -> np.ndarray:
    """Restore the face in ``box`` (grown by a quarter) and paste it back through a feathered ellipse."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    grow_x, grow_y = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    left, top = int(max(0, x0 - grow_x)), int(max(0, y0 - grow_y))
    right, bottom = int(min(width, x1 + grow_x)), int(min(height, y1 + grow_y))
    if right - left < 8 or bottom - top < 8:
        return image
    crop = image[top:bottom, left:right]
    restored = restorer.restore(crop)
    ellipse = np.zeros(crop.shape[:2], np.float32)
    center = ((right - left) // 2, (bottom - top) // 2)
    cv2.ellipse(ellipse, center, (int(center[0] * 0.85), int(center[1] * 0.85)), 0, 0, 360, 1.0, -1)
    weight = (strength * feather(ellipse, 0.1 * (right - left)))[..., None]
    out = image.copy()
    blended = crop.astype(np.float32) * (1 - weight) + restored.astype(np.float32) * weight
    out[top:bottom, left:right] = np.clip(blended, 0, 255).astype(np.uint8)
    return out
