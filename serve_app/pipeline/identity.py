"""What conditions the sampler on the reference's identity: an identity encoder. The FaceID profiles (tiny,
full-size, production) encode with ArcFace (``recognition.ArcFaceRecognizer``); the commercial profiles with the
CLIP image encoder of IP-Adapter Plus-face (``ClipFaceEncoder``), whose Resampler reads the encoder's penultimate
hidden states of a face crop — no face recognizer conditions the sampler there."""

from __future__ import annotations

import functools
from typing import Protocol

import cv2
import numpy as np
import torch
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from serve_app.pipeline.faces import ARCFACE_TEMPLATE, DetectedFace, similarity

FACE_CROP_ZOOM = 0.8  # the ArcFace template shrunk about its centre: the crop shows the whole face and some hair


class IdentityEncoder(Protocol):
    name: str

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The embedding the IP-Adapter's image projection takes for this face."""

    @property
    def negative(self) -> np.ndarray | None:
        """The classifier-free-guidance counterpart of every embedding (None: zeros)."""


def clip_processor(side: int) -> CLIPImageProcessor:
    """CLIP's preprocessing at ``side`` px (resize the short side, centre crop, CLIP mean and std), as diffusers
    builds it for an IP-Adapter image encoder."""
    return CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def face_crop(image: np.ndarray, face: DetectedFace, side: int) -> np.ndarray:
    """The face aligned on the ArcFace template, zoomed out by FACE_CROP_ZOOM, ``side`` px square."""
    centre = np.array([56.0, 56.0], np.float32)
    targets = ((ARCFACE_TEMPLATE - centre) * FACE_CROP_ZOOM + centre) * (side / 112.0)
    matrix = similarity(face.five_points, targets)
    return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class ClipFaceEncoder:
    """IP-Adapter Plus-face's identity: the CLIP vision tower's penultimate hidden states [tokens, D] of the
    aligned face crop; its negative is the encoding of an all-zero pixel tensor (what diffusers and the
    IP-Adapter reference code use for the unconditional branch)."""

    name = "clip-vision-plus-face"

    def __init__(self, model: CLIPVisionModelWithProjection, processor: CLIPImageProcessor) -> None:
        self.model, self.processor = model, processor
        self.side = model.config.image_size

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        pixels = self.processor(images=[face_crop(image, face, self.side)], return_tensors="pt").pixel_values
        return self._hidden_states(pixels)

    @functools.cached_property
    def negative(self) -> np.ndarray:
        return self._hidden_states(torch.zeros(1, 3, self.side, self.side))

    @torch.inference_mode()
    def _hidden_states(self, pixels: torch.Tensor) -> np.ndarray:
        pixels = pixels.to(self.model.device, self.model.dtype)
        states = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        return states[0].float().cpu().numpy()
