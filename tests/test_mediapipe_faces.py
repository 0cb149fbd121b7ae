"""MediaPipe's face detector, face mesh and person matte (the commercial profiles' faces, no dlib or insightface
weights) on real faces: the astronaut and the bundled sample face, with dlib's five points as the reference."""

from __future__ import annotations

import io
import threading

import cv2
import numpy as np
import pytest
from PIL import Image

from serve_app.pipeline.faces import DetectedFace, DlibFaceAnalyzer
from serve_app.pipeline.mediapipe_faces import MediaPipeFaceAnalyzer, PersonMatte
from serve_app.pipeline.parsing import FaceParsing, MeshFaceParser

# Measured: MediaPipe's five points lie within 0.041 of the eye distance of dlib's (the astronaut's mouth corners;
# eyes within 0.02); the nose tip and mouth corners are where the two models' conventions differ most.
FIVE_POINT_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def analyzer() -> MediaPipeFaceAnalyzer:
    return MediaPipeFaceAnalyzer()


@pytest.fixture(scope="module")
def matte() -> PersonMatte:
    return PersonMatte()


@pytest.fixture(scope="module")
def sample_rgb(sample_face: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample_face)).convert("RGB"))


@pytest.fixture(scope="module", params=["astronaut", "sample"])
def photo(request, astronaut: np.ndarray, sample_rgb: np.ndarray) -> np.ndarray:
    return astronaut if request.param == "astronaut" else sample_rgb


def eye_distance(face: DetectedFace) -> float:
    return float(np.linalg.norm(face.five_points[1] - face.five_points[0]))


def on_grey_canvas(image: np.ndarray, scale: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` scaled and centred on a grey side×side canvas, and where it went (x, y offset)."""
    small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((side, side, 3), 128, np.uint8)
    top, left = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    return canvas, np.array([left, top], np.float32)


def test_one_face_whose_five_points_agree_with_dlibs(analyzer, photo):
    faces = analyzer.detect(photo)
    assert len(faces) == 1
    face = faces[0]
    reference = DlibFaceAnalyzer().detect(photo)[0]
    error = np.linalg.norm(face.five_points - reference.five_points, axis=1)
    assert error.max() <= FIVE_POINT_TOLERANCE * eye_distance(reference)
    left_eye, right_eye, _, left_mouth, right_mouth = face.five_points
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]  # image order, as ARCFACE_TEMPLATE
    assert face.is_frontal()
    assert face.mesh.shape == (468, 2) and face.mesh.dtype == np.float32


def test_box_spans_brows_to_chin_like_dlibs(analyzer, photo):
    """Not the whole head: the mesh reaches up the forehead, the box stops at the brows as dlib's does."""
    face = analyzer.detect(photo)[0]
    reference = DlibFaceAnalyzer().detect(photo)[0]
    x0, y0, x1, y1 = face.box
    rx0, ry0, rx1, ry1 = reference.box
    side = rx1 - rx0
    assert np.allclose([x0, y0, x1, y1], [rx0, ry0, rx1, ry1], atol=0.15 * side)
    assert y0 > face.mesh[:, 1].min() and y0 < face.five_points[:2, 1].min()


def test_region_gives_full_image_coordinates(analyzer, astronaut):
    whole = analyzer.detect(astronaut)[0]
    inside = analyzer.detect(astronaut, region=(100, 0, 400, 300))
    assert len(inside) == 1
    error = np.linalg.norm(inside[0].five_points - whole.five_points, axis=1)
    assert error.max() < 0.06 * eye_distance(whole)  # measured 0.026: a different letterbox, the same face
    assert analyzer.detect(astronaut, region=(300, 250, 512, 512)) == []  # her helmet, no face


def test_generated_portraits_ignore_small_faces(analyzer, astronaut):
    """Her face 0.13 of the side: the short-range model finds it, but a generated portrait's face is bigger
    (detect_generated: no fallbacks, shorter side at least half of a third of the image)."""
    canvas, _ = on_grey_canvas(astronaut, 1.5, 1024)
    assert len(analyzer.detect(canvas, fallbacks=False)) == 1
    assert analyzer.detect_generated(canvas) == []
    assert len(analyzer.detect_generated(astronaut)) == 1


def test_full_range_fallback_finds_a_small_face(analyzer, astronaut):
    """Her face 0.07 of the side: too small for the short-range model, found by the full-range one."""
    whole = analyzer.detect(astronaut)[0]
    canvas, offset = on_grey_canvas(astronaut, 0.8, 1024)
    assert analyzer.detect(canvas, fallbacks=False) == []
    faces = analyzer.detect(canvas)
    assert len(faces) == 1
    expected = whole.five_points * 0.8 + offset
    error = np.linalg.norm(faces[0].five_points - expected, axis=1)
    assert error.max() < FIVE_POINT_TOLERANCE * eye_distance(whole) * 0.8


@pytest.mark.parametrize("kind", ["grey", "noise"])
def test_no_face_in_grey_or_noise(analyzer, kind):
    rng = np.random.default_rng(0)
    image = np.full((480, 640, 3), 128, np.uint8) if kind == "grey" else rng.integers(0, 256, (480, 640, 3), np.uint8)
    assert analyzer.detect(image) == []


def test_scaled_face_scales_its_mesh(analyzer, astronaut):
    face = analyzer.detect(astronaut)[0]
    assert np.allclose(face.scaled(0.5).mesh, face.mesh * 0.5)


def test_matte_covers_her_not_the_backdrop(matte, analyzer, astronaut):
    person = matte.matte(astronaut)
    assert person.shape == astronaut.shape[:2] and person.dtype == np.float32
    assert 0 <= person.min() and person.max() <= 1
    x, y = np.round(analyzer.detect(astronaut)[0].five_points[2]).astype(int)
    assert person[y - 10 : y + 10, x - 10 : x + 10].min() > 0.9  # around the nose
    assert person[:60, -60:].max() < 0.1  # the backdrop, top right


@pytest.fixture(scope="module")
def parsed(analyzer, matte, photo) -> tuple[DetectedFace, FaceParsing, np.ndarray]:
    face = analyzer.detect(photo)[0]
    return face, MeshFaceParser(matte).parse(photo, face), matte.matte(photo)


def test_mesh_parsing_regions(parsed):
    face, parsing, _ = parsed
    x, y = np.round(face.five_points).astype(int).T
    assert (parsing.face[y, x] == 1).all()
    assert (parsing.features * (1 - parsing.face)).sum() == 0
    assert (parsing.skin * parsing.features).sum() == 0
    assert (parsing.hair * (parsing.skin + parsing.features)).sum() == 0
    cheek = np.round(face.mesh[50]).astype(int)  # mid-cheek
    assert parsing.skin[cheek[1], cheek[0]] == 1
    assert (parsing.features[y[:2], x[:2]] == 1).all()  # the eyes


def test_hair_lies_above_the_eyes_and_on_the_person(parsed):
    face, parsing, person = parsed
    rows = np.nonzero(parsing.hair)[0]
    assert len(rows) > 0.5 * (face.box[2] - face.box[0]) ** 2  # a head of hair, not specks (measured 0.8 to 1.05)
    assert (rows < face.five_points[:2, 1].max()).mean() > 0.7  # measured 0.81 to 0.84: the rest falls aside
    assert (parsing.hair * (person < 0.5)).sum() == 0


def test_mesh_parser_needs_a_mesh(matte, astronaut):
    face = DlibFaceAnalyzer().detect(astronaut)[0]
    with pytest.raises(ValueError, match="mesh"):
        MeshFaceParser(matte).parse(astronaut, face)


def test_concurrent_detection_gives_the_same_faces(analyzer, astronaut, sample_rgb):
    images = [astronaut, sample_rgb]
    expected = [analyzer.detect(image)[0].five_points for image in images]
    results: list[list[np.ndarray]] = [[], []]

    def detect_many(slot: int) -> None:
        for _ in range(10):
            for image in images:
                results[slot].append(analyzer.detect(image)[0].five_points)

    threads = [threading.Thread(target=detect_many, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for found in results:
        assert len(found) == 20
        assert all(np.array_equal(points, expected[i % 2]) for i, points in enumerate(found))
