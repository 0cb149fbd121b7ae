"""Stage 1 on real photos: the face is found, cropped aligned and embedded; skin smoothing stays on skin."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import packaged_image, png_bytes

from serve_app.pipeline.beautify import smooth_skin
from serve_app.pipeline.errors import NoFaceError
from serve_app.pipeline.faces import ARCFACE_TEMPLATE
from serve_app.pipeline.parsing import parse_face
from serve_app.pipeline.preprocess import ALIGNED_SIZE, preprocess


def test_finds_and_aligns_the_astronaut(models, astronaut_png):
    reference = preprocess(models, astronaut_png)
    x0, y0, x1, y1 = reference.face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200  # her face, upper middle of the photo
    assert reference.aligned_face.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    # Re-detecting on the aligned crop puts the eyes, nose and mouth on the template.
    found = models.faces.detect(reference.aligned_face)
    assert len(found) == 1
    error = np.linalg.norm(found[0].five_points - ARCFACE_TEMPLATE * ALIGNED_SIZE / 112, axis=1)
    assert error[:2].max() < 0.04 * ALIGNED_SIZE  # eyes
    assert error.max() < 0.08 * ALIGNED_SIZE  # her wide smile moves the mouth corners
    assert reference.identity_embedding.shape == (512,)
    assert np.linalg.norm(reference.identity_embedding) == pytest.approx(1.0, abs=1e-5)
    assert reference.aligned_mask[ALIGNED_SIZE // 2, ALIGNED_SIZE // 2] > 0.9  # face region covers the nose


def test_parsing_separates_skin_features_and_hair(models, astronaut):
    face = models.faces.detect(astronaut)[0]
    parsing = parse_face(astronaut, face)
    assert parsing.hair[40:80, 170:260].mean() > 0.3  # her hair above the forehead
    eye = np.round(face.landmarks[36:42].mean(0)).astype(int)
    assert parsing.features[eye[1], eye[0]] == 1 and parsing.skin[eye[1], eye[0]] == 0
    cheek = np.round((face.landmarks[2] + face.landmarks[31]) / 2).astype(int)
    assert parsing.skin[cheek[1], cheek[0]] == 1 and parsing.hair[cheek[1], cheek[0]] == 0
    assert parsing.skin[:, :60].sum() == 0 and parsing.face[-60:].sum() == 0
    assert (parsing.hair * parsing.skin).sum() == 0 and (parsing.hair * parsing.features).sum() == 0


def test_no_face_is_a_422_no_face_error(models):
    import skimage.data

    with pytest.raises(NoFaceError) as error:
        preprocess(models, png_bytes(skimage.data.chelsea()))
    assert (error.value.code, error.value.http_status) == ("no_face", 422)


def test_tight_112_face_crop(models):
    reference = preprocess(models, png_bytes(packaged_image("Tom_Hanks_54745.png")))
    assert reference.aligned_face.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)


def test_greyscale_photo(models, astronaut):
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    reference = preprocess(models, png_bytes(grey))
    assert reference.aligned_face.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    assert np.ptp(reference.aligned_face[..., 0].astype(int) - reference.aligned_face[..., 1]) <= 4  # still grey


def test_group_photo_takes_the_largest_face(models):
    group = cv2.resize(packaged_image("t1.jpg"), (1000, 692), interpolation=cv2.INTER_AREA)  # no resize inside
    faces = models.faces.detect(group)
    assert len(faces) >= 4
    reference = preprocess(models, png_bytes(group))
    assert reference.face.area == pytest.approx(max(face.area for face in faces))


def high_frequency_energy(image: np.ndarray, region: np.ndarray) -> float:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    detail = grey - cv2.GaussianBlur(grey, (0, 0), 2.0)
    return float((detail[region] ** 2).mean())


def test_skin_smoothing_touches_skin_only(models, astronaut):
    face = models.faces.detect(astronaut)[0]
    parsing = parse_face(astronaut, face)
    width = face.box[2] - face.box[0]
    smoothed = smooth_skin(astronaut, parsing.skin, width)

    inner_skin = cv2.erode(parsing.skin.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert inner_skin.sum() > 500
    assert high_frequency_energy(smoothed, inner_skin) < 0.6 * high_frequency_energy(astronaut, inner_skin)

    eyes = np.zeros(astronaut.shape[:2], bool)
    for eye in (face.landmarks[36:42], face.landmarks[42:48]):
        cv2.fillPoly(eyes.view(np.uint8), [np.round(eye).astype(np.int32)], 1)
    assert eyes.sum() > 20
    assert np.array_equal(smoothed[eyes], astronaut[eyes])
    background = np.zeros(astronaut.shape[:2], bool)
    background[:, :60] = True
    assert np.array_equal(smoothed[background], astronaut[background])


def test_face_analysis_is_safe_from_many_threads(models, astronaut):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        found = list(pool.map(lambda _: models.faces.detect(astronaut), range(24)))
    assert all(len(faces) == 1 and faces[0].box == found[0][0].box for faces in found)
