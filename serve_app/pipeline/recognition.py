"""Identity scores: how alike the face in a portrait is to the reference, in [0, 1] (1 identical, 0.5 at the
recognizer's same-person threshold). Production ranks with ArcFace (cosine of L2-normalised embeddings); the
tiny profile, whose ArcFace is a small random network, ranks with dlib's real ResNet descriptor."""

from __future__ import annotations

from typing import Protocol

import cv2
import numpy as np
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.utils import face_align

from serve_app.pipeline.faces import DetectedFace, DlibFaceAnalyzer

SAME_PERSON_DISTANCE = 0.6  # dlib: Euclidean descriptor distance
SAME_PERSON_COSINE = 0.4  # ArcFace (w600k_r50): a common verification threshold


class Recognizer(Protocol):
    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The face's identity descriptor."""

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        """The identity score of ``descriptor`` against ``reference``, in [0, 1]."""


class DlibRecognizer:
    def __init__(self, faces: DlibFaceAnalyzer) -> None:
        self.faces = faces

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        return self.faces.describe(image, face)

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        """1 identical, 0.5 at dlib's same-person distance, 0 at twice it and beyond."""
        distance = float(np.linalg.norm(descriptor - reference))
        return float(np.clip(1.0 - distance / (2 * SAME_PERSON_DISTANCE), 0.0, 1.0))


class ArcFaceRecognizer:
    def __init__(self, model: ArcFaceONNX) -> None:
        self.model = model

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The L2-normalised ArcFace embedding, made as insightface makes ``Face.normed_embedding`` (``norm_crop``
        of the five points): IP-Adapter-FaceID was trained on exactly those embeddings."""
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        crop = face_align.norm_crop(bgr, landmark=face.five_points, image_size=self.model.input_size[0])
        embedding = self.model.get_feat([crop])[0]
        return (embedding / max(float(np.linalg.norm(embedding)), 1e-12)).astype(np.float32)

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        """Linear in the cosine: 1 identical, 0.5 at the same-person cosine, 0 as far below it."""
        cosine = float(np.dot(descriptor, reference))
        return float(np.clip(0.5 + 0.5 * (cosine - SAME_PERSON_COSINE) / (1 - SAME_PERSON_COSINE), 0.0, 1.0))
