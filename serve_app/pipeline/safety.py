"""The output safety check (DESIGN §5): Stable Diffusion's safety checker — CLIP ViT-L/14 image embeddings
compared with 17 NSFW concept embeddings (diffusers' ``StableDiffusionSafetyChecker``) — on every fused candidate
before it is ranked. A flagged candidate is rejected as ``unsafe_content`` and its pixels are blacked out, so it
never leaves the service; safe candidates fill the K first."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from transformers import CLIPImageProcessor

UNSAFE_CONTENT = "unsafe_content"


class SafetyChecker:
    def __init__(self, model: StableDiffusionSafetyChecker, processor: CLIPImageProcessor) -> None:
        self.model, self.processor = model, processor

    @torch.inference_mode()
    def flags(self, images: Sequence[np.ndarray]) -> list[bool]:
        """Whether each RGB image shows NSFW content (one batched pass)."""
        if not images:
            return []
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        # The checker blacks out the entries of its ``images`` argument in place: give it placeholders, the
        # caller blacks out its own images.
        placeholders = [np.zeros(1, np.uint8) for _ in images]
        _, unsafe = self.model(clip_input=pixels.to(self.model.device, self.model.dtype), images=placeholders)
        return [bool(flag) for flag in unsafe]
