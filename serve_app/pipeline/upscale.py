"""Stage 5, the upscaler: RRDBNet (Real-ESRGAN) super-resolution ×2/×4 through spandrel, then face restoration
of the face region pasted back with a feathered mask."""

from __future__ import annotations

import numpy as np
from spandrel import ImageModelDescriptor

from serve_app.pipeline.image_models import run_image_model
from serve_app.pipeline.restoration import FaceRestorer, restore_region

FACE_RESTORATION_STRENGTH = 0.8


def upscale_portrait(
    upscalers: dict[int, ImageModelDescriptor],
    restorer: FaceRestorer,
    image: np.ndarray,
    face_box: tuple[float, float, float, float] | None,
    scale: int,
) -> np.ndarray:
    """Super-resolve by ``scale`` (1 keeps the size) and restore the face in ``face_box`` (given before scaling)."""
    if scale != 1:
        if scale not in upscalers:
            raise ValueError(f"no upscaler for ×{scale}; available: {sorted(upscalers)}")
        image = run_image_model(upscalers[scale], image)
    if face_box is None:
        return image
    return restore_region(image, tuple(v * scale for v in face_box), restorer, FACE_RESTORATION_STRENGTH)
