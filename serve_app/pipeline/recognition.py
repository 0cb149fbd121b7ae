"""Identity scores: how alike the face in a portrait is to the reference, in [0, 1] (1 identical, 0.5 at the
recognizer's same-person threshold). Production ranks with ArcFace (cosine of L2-normalised embeddings); the
tiny profile, whose ArcFace is a small random network, ranks with dlib's real ResNet descriptor; the commercial
profiles rank with AuraFace-v1 (an ArcFace-format ONNX, Apache-2.0) run without insightface. Every recognizer
has a ``name``: the judge a response and the quality harness report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np
import onnx
import onnxruntime

from serve_app.pipeline.faces import DetectedFace, DlibFaceAnalyzer, similarity_to_template

if TYPE_CHECKING:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

SAME_PERSON_DISTANCE = 0.6  # dlib: Euclidean descriptor distance
SAME_PERSON_COSINE = 0.4  # ArcFace (w600k_r50): a common verification threshold
NORMALISING_NODES = 8  # insightface looks for Sub and Mul among a recognition graph's first nodes


class Recognizer(Protocol):
    name: str

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The face's identity descriptor."""

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        """The identity score of ``descriptor`` against ``reference``, in [0, 1]."""


def cosine_score(descriptor: np.ndarray, reference: np.ndarray) -> float:
    """Linear in the cosine of two unit vectors: 1 identical, 0.5 at the same-person cosine, 0 as far below it."""
    cosine = float(np.dot(descriptor, reference))
    return float(np.clip(0.5 + 0.5 * (cosine - SAME_PERSON_COSINE) / (1 - SAME_PERSON_COSINE), 0.0, 1.0))


def unit(vector: np.ndarray) -> np.ndarray:
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


class DlibRecognizer:
    name = "dlib-resnet-v1"

    def __init__(self, faces: DlibFaceAnalyzer) -> None:
        self.faces = faces

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        return self.faces.describe(image, face)

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        """1 identical, 0.5 at dlib's same-person distance, 0 at twice it and beyond."""
        distance = float(np.linalg.norm(descriptor - reference))
        return float(np.clip(1.0 - distance / (2 * SAME_PERSON_DISTANCE), 0.0, 1.0))


class ArcFaceRecognizer:
    """insightface's ArcFace: the FaceID profiles' identity encoder (IP-Adapter-FaceID takes its embedding) and,
    outside tiny, their ranking recognizer."""

    name = "arcface-w600k_r50"
    negative = None  # IP-Adapter-FaceID's unconditional embedding is zeros

    def __init__(self, model: ArcFaceONNX) -> None:
        self.model = model

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        """The L2-normalised ArcFace embedding, made as insightface makes ``Face.normed_embedding`` (``norm_crop``
        of the five points): IP-Adapter-FaceID was trained on exactly those embeddings."""
        from insightface.utils import face_align

        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        crop = face_align.norm_crop(bgr, landmark=face.five_points, image_size=self.model.input_size[0])
        return unit(self.model.get_feat([crop])[0])

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        return cosine_score(descriptor, reference)


class OnnxFaceRecognizer:
    """An insightface-format recognition ONNX (AuraFace-v1's ``glintr100.onnx``: [N, 3, 112, 112] RGB in, a
    512-d embedding out) on onnxruntime alone: the face aligned on the ArcFace template by its five points and
    normalised as insightface would (none when the graph starts by normalising, else (x − 127.5) / 127.5)."""

    def __init__(self, model_file: Path, providers: Sequence[str], name: str) -> None:
        self.name = name
        self.session = onnxruntime.InferenceSession(str(model_file), providers=list(providers))
        tensor = self.session.get_inputs()[0]
        self.input_name, self.side = tensor.name, int(tensor.shape[2])
        self.mean, self.std = graph_normalisation(onnx.load(str(model_file), load_external_data=False))

    def describe(self, image: np.ndarray, face: DetectedFace) -> np.ndarray:
        matrix = similarity_to_template(face.five_points, self.side)
        crop = cv2.warpAffine(image, matrix, (self.side, self.side), flags=cv2.INTER_LINEAR)
        pixels = ((crop.astype(np.float32) - self.mean) / self.std).transpose(2, 0, 1)[None]
        return unit(self.session.run(None, {self.input_name: pixels})[0][0])

    def similarity(self, descriptor: np.ndarray, reference: np.ndarray) -> float:
        return cosine_score(descriptor, reference)


def graph_normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """(mean, std) to apply before the graph: insightface's rule for recognition models."""
    names = [node.name for node in model.graph.node[:NORMALISING_NODES]]
    subtracts = any(name.startswith(("Sub", "_minus")) for name in names)
    multiplies = any(name.startswith(("Mul", "_mul")) for name in names)
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 127.5)
