"""Identity embeddings: the ArcFace embedding is exactly insightface's ``Face.normed_embedding`` (what
IP-Adapter-FaceID was trained on), and scores put the same-person threshold at 0.5."""

from __future__ import annotations

import cv2
import numpy as np
from insightface.app.common import Face

from serve_app.pipeline.recognition import SAME_PERSON_COSINE


def test_arcface_embedding_is_insightfaces_normed_embedding(models, astronaut):
    face = models.faces.detect(astronaut)[0]
    ours = models.identity_recognizer.describe(astronaut, face)
    theirs = Face(kps=face.five_points, bbox=np.array(face.box))
    models.identity_encoder.get(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), theirs)
    np.testing.assert_allclose(ours, theirs.normed_embedding, atol=1e-7)
    assert abs(float(np.linalg.norm(ours)) - 1.0) < 1e-5


def test_arcface_score_is_one_half_at_the_same_person_cosine(models):
    recognizer = models.identity_recognizer
    reference = np.zeros(512, np.float32)
    reference[0] = 1.0
    at_threshold = np.zeros(512, np.float32)
    at_threshold[:2] = SAME_PERSON_COSINE, np.sqrt(1 - SAME_PERSON_COSINE**2)
    assert recognizer.similarity(reference, reference) == 1.0
    assert abs(recognizer.similarity(at_threshold, reference) - 0.5) < 1e-6
    assert recognizer.similarity(-reference, reference) == 0.0
