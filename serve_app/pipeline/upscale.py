"""Stage 5, the upscaler: RRDBNet (Real-ESRGAN) super-resolution ×2/×4 through spandrel, then restoration of
the aligned face, pasted back through a feathered face ellipse."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from spandrel import ImageModelDescriptor

from serve_app.pipeline.image_models import run_image_model
from serve_app.pipeline.restoration import FaceRestorer, restore_face

UPSCALE_FACTORS = (2, 4)  # one super-resolution model per factor; factor 1 skips the stage's model
FACE_RESTORATION_STRENGTH = 0.8


def upscale_portrait(
    upscalers: dict[int, ImageModelDescriptor],
    restorer: FaceRestorer,
    image: np.ndarray,
    faces_points: Sequence[np.ndarray],
    scale: int,
) -> np.ndarray:
    """Super-resolve by ``scale`` (1 keeps the size) and restore each face whose five points (given before
    scaling) are in ``faces_points``."""
    if scale != 1:
        if scale not in upscalers:
            raise ValueError(f"no upscaler for ×{scale}; available: {sorted(upscalers)}")
        image = run_image_model(upscalers[scale], image)
    for points in faces_points:
        image = restore_face(image, points * scale, restorer, FACE_RESTORATION_STRENGTH)
    return image
