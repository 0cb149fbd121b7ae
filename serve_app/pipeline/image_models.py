"""Running spandrel image-to-image models (Real-ESRGAN, GFPGAN) on RGB uint8 arrays."""

from __future__ import annotations

import numpy as np
import torch
from spandrel import ImageModelDescriptor


@torch.inference_mode()
def run_image_model(
    model: ImageModelDescriptor, image: np.ndarray, value_range: tuple[float, float] = (0, 1)
) -> np.ndarray:
    """The model's output for ``image``; ``value_range`` is what the network expects and returns (GFPGAN
    works in [-1, 1], super-resolution models in [0, 1])."""
    low, high = value_range
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).mul(high - low).add(low)
    tensor = tensor.to(model.device, next(model.model.parameters()).dtype)
    output = model(tensor).float().sub(low).div(high - low).clamp(0, 1)[0].permute(1, 2, 0)
    return (output * 255).round().to(torch.uint8).cpu().numpy()
