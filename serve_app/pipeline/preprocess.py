"""Stage 1, the preprocessor: decode and validate, find the one face (the largest), beautify skin, enhance the
face, parse face and hair, crop aligned, and embed the identity."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from serve_app.pipeline.beautify import smooth_skin
from serve_app.pipeline.errors import NoFaceError
from serve_app.pipeline.faces import DetectedFace, align_face
from serve_app.pipeline.images import ImageLimits, decode_image, resize_max_side
from serve_app.pipeline.models import Models
from serve_app.pipeline.restoration import restore_face

WORKING_MAX_SIDE = 1024
ALIGNED_SIZE = 256
ENHANCEMENT_STRENGTH = 0.5


@dataclass(frozen=True)
class Reference:
    """What later stages need of the reference face (the full image stays in the preprocessor).
    ``aligned_face`` is ALIGNED_SIZE² on the ArcFace template, with its face region mask ``aligned_mask``;
    ``identity_embedding`` is the L2-normalised 512-d ArcFace embedding that conditions the sampler;
    ``recognition_descriptor`` is the ranking recognizer's (ArcFace in production, dlib's ResNet on tiny)."""

    face: DetectedFace
    aligned_face: np.ndarray
    aligned_mask: np.ndarray
    identity_embedding: np.ndarray
    recognition_descriptor: np.ndarray


def preprocess(models: Models, data: bytes, limits: ImageLimits = ImageLimits()) -> Reference:
    image, _ = resize_max_side(decode_image(data, limits), WORKING_MAX_SIDE)
    found = models.faces.detect(image)
    if not found:
        raise NoFaceError("no face was found in the image; send a front-facing render or photo of one face")
    face = found[0]
    parsing = models.face_parser.parse(image, face)
    face_width = face.box[2] - face.box[0]
    beautified = smooth_skin(image, parsing.skin, face_width)
    enhanced = restore_face(beautified, face.five_points, models.face_restorer, ENHANCEMENT_STRENGTH)
    aligned, matrix = align_face(enhanced, face, ALIGNED_SIZE)
    # The fused region is the face without the reference's hair: hair follows the style, not the render.
    fused_region = parsing.face * (1.0 - parsing.hair)
    aligned_mask = cv2.warpAffine(fused_region, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR)
    identity = models.identity_recognizer.describe(enhanced, face)
    ranking = models.recognizer
    return Reference(
        face=face,
        aligned_face=aligned,
        aligned_mask=aligned_mask,
        identity_embedding=identity,
        recognition_descriptor=identity if ranking is models.identity_recognizer else ranking.describe(enhanced, face),
    )
