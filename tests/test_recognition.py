"""Identity embeddings: the ArcFace embedding is exactly insightface's ``Face.normed_embedding`` (what
IP-Adapter-FaceID was trained on); the commercial profiles' recognizer, which runs an ArcFace-format ONNX
(AuraFace) without insightface, embeds as insightface would; scores put the same-person threshold at 0.5."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
from insightface.app.common import Face
from insightface.model_zoo import get_model

from serve_app.pipeline.models import tiny
from serve_app.pipeline.recognition import SAME_PERSON_COSINE, OnnxFaceRecognizer, graph_normalisation


def test_arcface_embedding_is_insightfaces_normed_embedding(models, astronaut):
    face = models.faces.detect(astronaut)[0]
    ours = models.identity_encoder.describe(astronaut, face)
    theirs = Face(kps=face.five_points, bbox=np.array(face.box))
    models.identity_encoder.model.get(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), theirs)
    np.testing.assert_allclose(ours, theirs.normed_embedding, atol=1e-7)
    assert abs(float(np.linalg.norm(ours)) - 1.0) < 1e-5


def test_the_onnx_recognizer_embeds_as_insightface_would(models, astronaut, tmp_path: Path):
    """The same ArcFace-format file through insightface and through onnxruntime alone: only the five-point
    similarity fits differ (insightface's least squares, OpenCV's least median), so the embeddings agree to a
    cosine of 0.999 (measured 0.99999988 on the astronaut, and 1.0 with the ArcFace-sized full-size net)."""
    path = tiny.write_arcface_onnx(tmp_path / "glintr100.onnx")
    face = models.faces.detect(astronaut)[0]
    ours = OnnxFaceRecognizer(path, ["CPUExecutionProvider"], "auraface-v1").describe(astronaut, face)
    theirs = Face(kps=face.five_points, bbox=np.array(face.box))
    get_model(str(path), providers=["CPUExecutionProvider"]).get(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), theirs)
    assert float(np.dot(ours, theirs.normed_embedding)) > 0.999
    assert graph_normalisation(onnx.load(str(path))) == (0.0, 1.0)  # the graph normalises: insightface's rule


def test_arcface_score_is_one_half_at_the_same_person_cosine(models):
    recognizer = models.identity_encoder
    reference = np.zeros(512, np.float32)
    reference[0] = 1.0
    at_threshold = np.zeros(512, np.float32)
    at_threshold[:2] = SAME_PERSON_COSINE, np.sqrt(1 - SAME_PERSON_COSINE**2)
    assert recognizer.similarity(reference, reference) == 1.0
    assert abs(recognizer.similarity(at_threshold, reference) - 0.5) < 1e-6
    assert recognizer.similarity(-reference, reference) == 0.0
