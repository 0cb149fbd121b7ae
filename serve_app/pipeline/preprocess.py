"""Stage 1, the preprocessor, for each person's reference image (1 to MAX_PEOPLE, left to right in the portrait):

1. decode and validate the image, and bound its size;
2. find the one face (the largest);
3. parse face and hair;
4. beautify the skin and enhance the face;
5. crop the face aligned, with the mask of its fused region;
6. embed the identity;
7. for a group, check that no two references are the same person.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import cv2
import numpy as np

from serve_app.pipeline.beautify import smooth_skin
from serve_app.pipeline.errors import InvalidParameterError, NoFaceError, PortraitError, SamePersonError
from serve_app.pipeline.faces import DetectedFace, FaceAnalyzer, align_face
from serve_app.pipeline.images import ImageLimits, decode_image, resize_max_side
from serve_app.pipeline.models import Models
from serve_app.pipeline.parsing import FaceParsing
from serve_app.pipeline.recognition import Recognizer
from serve_app.pipeline.request import MAX_PEOPLE
from serve_app.pipeline.restoration import FaceRestorer, restore_face

WORKING_MAX_SIDE = 1024
ALIGNED_SIZE = 256
ENHANCEMENT_STRENGTH = 0.5
# Two references scoring this much alike (the ranking recognizer's identity score, 0.5 at its own same-person
# threshold) are one person twice: stricter than verification, so that look-alike avatars are not refused. Measured
# with dlib (tiny): the astronaut re-cropped 0.94, mirrored 0.81; seven different people 0.27-0.50.
SAME_PERSON_SCORE = 0.75


@dataclass(frozen=True)
class Reference:
    """What later stages need of the reference face (the full image stays in the preprocessor).
    ``aligned_face`` is ALIGNED_SIZE² on the ArcFace template, with its face region mask ``aligned_mask``;
    ``identity_embedding`` is what conditions the sampler (the L2-normalised 512-d ArcFace embedding for FaceID, the
    CLIP encoder's hidden states of the face crop for Plus-face) and ``identity_negative`` its unconditional
    counterpart (None: zeros); ``recognition_descriptor`` is the ranking recognizer's (ArcFace in production,
    dlib's ResNet on tiny, AuraFace in the commercial profiles)."""

    face: DetectedFace
    aligned_face: np.ndarray
    aligned_mask: np.ndarray
    identity_embedding: np.ndarray
    identity_negative: np.ndarray | None
    recognition_descriptor: np.ndarray


def preprocess(models: Models, data: bytes, limits: ImageLimits = ImageLimits()) -> Reference:
    # 1. Decode and bound the size
    image, _ = resize_max_side(decode_image(data, limits), WORKING_MAX_SIDE)
    # 2. Find the one face
    face = largest_face(models.faces, image)
    # 3. Parse face and hair
    parsing = models.face_parser.parse(image, face)
    # 4. Beautify and enhance
    enhanced = beautify_and_enhance(image, face, parsing, models.face_restorer)
    # 5. Align and mask
    aligned, aligned_mask = align_with_mask(enhanced, face, parsing)
    # 6. Embed identity
    identity, descriptor = embed_identity(models, enhanced, face)
    return Reference(
        face=face,
        aligned_face=aligned,
        aligned_mask=aligned_mask,
        identity_embedding=identity,
        identity_negative=models.identity_encoder.negative,
        recognition_descriptor=descriptor,
    )


def preprocess_people(
    models: Models, images: Sequence[bytes], limits: ImageLimits = ImageLimits()
) -> tuple[Reference, ...]:
    """Every person's reference, in order; an image at fault is named (``image`` for one person, ``image[i]``
    among several), and two references of one person are refused."""
    if not 1 <= len(images) <= MAX_PEOPLE:
        message = f"send 1 to {MAX_PEOPLE} face images, one per person; got {len(images)}"
        raise InvalidParameterError(message, {"image": message})
    if len(images) == 1:
        return (preprocess(models, images[0], limits),)
    references = []
    for index, data in enumerate(images):
        try:
            references.append(preprocess(models, data, limits))
        except PortraitError as error:
            error.message = f"image {index + 1} of {len(images)}: {error.message}"
            error.args, error.fields = (error.message,), {f"image[{index}]": error.message}
            raise
    check_distinct_people(models.recognizer, references)
    return tuple(references)


def check_distinct_people(recognizer: Recognizer, references: Sequence[Reference]) -> None:
    """Refuse a group where two references score SAME_PERSON_SCORE or more alike."""
    for (i, first), (j, second) in combinations(enumerate(references), 2):
        score = recognizer.similarity(first.recognition_descriptor, second.recognition_descriptor)
        if score >= SAME_PERSON_SCORE:
            message = (
                f"images {i + 1} and {j + 1} show the same person (identity score {score:.2f} ≥ "
                f"{SAME_PERSON_SCORE}); send each person once"
            )
            raise SamePersonError(message, {f"image[{j}]": message})


def largest_face(faces: FaceAnalyzer, image: np.ndarray) -> DetectedFace:
    found = faces.detect(image)
    if not found:
        raise NoFaceError("no face was found in the image; send a front-facing render or photo of one face")
    return found[0]


def beautify_and_enhance(
    image: np.ndarray, face: DetectedFace, parsing: FaceParsing, restorer: FaceRestorer
) -> np.ndarray:
    """Skin smoothed (at the face's scale), then the face restored at partial strength."""
    beautified = smooth_skin(image, parsing.skin, face.box[2] - face.box[0])
    return restore_face(beautified, face.five_points, restorer, ENHANCEMENT_STRENGTH)


def align_with_mask(image: np.ndarray, face: DetectedFace, parsing: FaceParsing) -> tuple[np.ndarray, np.ndarray]:
    """The aligned face crop and, warped alike, the region fusion pastes: the face without the reference's hair
    (hair follows the style, not the render)."""
    aligned, matrix = align_face(image, face, ALIGNED_SIZE)
    fused_region = parsing.face * (1.0 - parsing.hair)
    mask = cv2.warpAffine(fused_region, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR)
    return aligned, mask


def embed_identity(models: Models, image: np.ndarray, face: DetectedFace) -> tuple[np.ndarray, np.ndarray]:
    """The embedding that conditions the sampler and the ranking recognizer's descriptor (the same array where
    ArcFace does both)."""
    identity = models.identity_encoder.describe(image, face)
    ranking = models.recognizer
    return identity, identity if ranking is models.identity_encoder else ranking.describe(image, face)
