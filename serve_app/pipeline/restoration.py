"""Face restoration and its paste-back, shared by the preprocessor and the upscaler: the face is warped onto the
FFHQ five-point template (the alignment GFPGAN and CodeFormer were trained on), restored, and blended back
through the inverse warp with a feathered face ellipse."""

from __future__ import annotations

import functools
import threading
from typing import Protocol

import cv2
import numpy as np
from spandrel import ImageModelDescriptor

from serve_app.pipeline.faces import similarity
from serve_app.pipeline.image_models import run_image_model

# facexlib's FaceRestoreHelper template at 512², in ARCFACE_TEMPLATE's point order (eyes, nose tip, mouth corners).
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
# The part of the aligned crop pasted back, on the 512² template: hairline to chin, ear to ear. The rest of the
# crop (hair, neck, background) is the restorer's weakest work and stays as it was.
FACE_ELLIPSE_512 = ((256, 290), (165, 205))
PASTE_FEATHER = 0.1  # of the crop side
NATIVE_SIDE_RANGE = (64, 1024)


class FaceRestorer(Protocol):
    side: int | None
    """The square crop it restores (``None``: any side; the face is then aligned at its own scale)."""

    def restore(self, face: np.ndarray) -> np.ndarray:
        """Restore an RGB face crop aligned on ``FFHQ_TEMPLATE_512`` scaled to its side; same size out."""


class ClassicalFaceRestorer:
    """The tiny profile's restorer: non-local-means denoising (softens render artefacts and decals), CLAHE on
    lightness (photo-like local contrast) and a light unsharp mask. Production uses GFPGAN/CodeFormer."""

    side = None

    def restore(self, face: np.ndarray) -> np.ndarray:
        denoised = cv2.fastNlMeansDenoisingColored(face, None, 5, 5, 5, 15)
        lab = cv2.cvtColor(denoised, cv2.COLOR_RGB2LAB)
        # 5×5 tiles on the FFHQ-framed crop (≈ 1.7 face widths): each about a third of the face wide
        lab[..., 0] = cv2.createCLAHE(clipLimit=1.5, tileGridSize=(5, 5)).apply(lab[..., 0])
        contrasted = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        blurred = cv2.GaussianBlur(contrasted, (0, 0), 1.5)
        return cv2.addWeighted(contrasted, 1.4, blurred, -0.4, 0)


class NetworkFaceRestorer:
    """GFPGAN (or CodeFormer) through spandrel on its square input (512² for GFPGAN), in [-1, 1] as GFPGAN was
    trained. One forward pass at a time."""

    def __init__(self, model: ImageModelDescriptor) -> None:
        self.model = model
        self.side = max(model.size_requirements.minimum, 512)
        self._lock = threading.Lock()

    def restore(self, face: np.ndarray) -> np.ndarray:
        with self._lock:
            return run_image_model(self.model, face, value_range=(-1, 1))


def native_side(points: np.ndarray) -> int:
    """The crop side at which the template's eyes are as far apart as the face's (a multiple of 8)."""
    eyes = float(np.linalg.norm(points[1] - points[0]))
    template_eyes = float(np.linalg.norm(FFHQ_TEMPLATE_512[1] - FFHQ_TEMPLATE_512[0]))
    side = round(512 * eyes / template_eyes / 8) * 8
    return int(np.clip(side, *NATIVE_SIDE_RANGE))


@functools.cache
def paste_weight(side: int) -> np.ndarray:
    """The paste-back weight on a ``side``² aligned crop: 0 outside the face ellipse, rising smoothly to 1 over
    ``PASTE_FEATHER`` of the side inside it (a blur would leak outside)."""
    mask = np.zeros((side, side), np.uint8)
    (cx, cy), (ax, ay) = FACE_ELLIPSE_512
    scale = side / 512
    cv2.ellipse(mask, (round(cx * scale), round(cy * scale)), (round(ax * scale), round(ay * scale)), 0, 0, 360, 1, -1)
    ramp = np.clip(cv2.distanceTransform(mask, cv2.DIST_L2, 5) / (PASTE_FEATHER * side), 0, 1)
    return ramp * ramp * (3 - 2 * ramp)


def restore_face(image: np.ndarray, points: np.ndarray, restorer: FaceRestorer, strength: float) -> np.ndarray:
    """Restore the face whose five points are ``points`` and blend it in at ``strength`` (0 keeps the image)."""
    side = restorer.side or native_side(points)
    matrix = similarity(points, FFHQ_TEMPLATE_512 * (side / 512))
    if matrix is None:
        return image
    crop = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    restored = restorer.restore(crop)
    inverse = cv2.invertAffineTransform(matrix)
    height, width = image.shape[:2]
    pasted = cv2.warpAffine(restored, inverse, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    weight = strength * cv2.warpAffine(paste_weight(side), inverse, (width, height), flags=cv2.INTER_LINEAR)[..., None]
    blended = image.astype(np.float32) * (1 - weight) + pasted.astype(np.float32) * weight
    return np.clip(blended, 0, 255).astype(np.uint8)
