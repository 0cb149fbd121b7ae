"""Face restoration: the restorer sees the face aligned as GFPGAN was trained (FFHQ template), and only the face
ellipse comes back, following the face wherever it is and however it is tilted."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from serve_app.pipeline.faces import DetectedFace
from serve_app.pipeline.restoration import FFHQ_TEMPLATE_512, ClassicalFaceRestorer, native_side, restore_face


class Recording:
    """Wraps a restorer and keeps the crops it was given."""

    def __init__(self, restorer, side: int | None) -> None:
        self.restorer, self.side, self.crops = restorer, side, []

    def restore(self, face: np.ndarray) -> np.ndarray:
        self.crops.append(face)
        return self.restorer.restore(face)


class Negative:
    """Inverts the crop: every pixel it touches visibly changes."""

    side = 256

    def restore(self, face: np.ndarray) -> np.ndarray:
        return 255 - face


@pytest.fixture(scope="module")
def face(models, astronaut) -> DetectedFace:
    return models.faces.detect(astronaut)[0]


@pytest.mark.parametrize("side", [512, None])
def test_the_restorer_gets_the_face_on_the_ffhq_template(models, astronaut, face, side):
    recording = Recording(ClassicalFaceRestorer(), side)
    restore_face(astronaut, face.five_points, recording, 0.8)
    (crop,) = recording.crops
    crop_side = side or native_side(face.five_points)
    assert crop.shape == (crop_side, crop_side, 3)
    found = models.faces.detect(crop)
    assert len(found) == 1
    error = np.linalg.norm(found[0].five_points - FFHQ_TEMPLATE_512 * (crop_side / 512), axis=1)
    assert error.max() < 0.04 * crop_side


def test_only_the_face_changes(astronaut, face):
    restored = restore_face(astronaut, face.five_points, Negative(), 1.0)
    changed = np.abs(restored.astype(int) - astronaut.astype(int)).max(axis=2) > 8
    x0, y0, x1, y1 = (int(v) for v in face.box)
    centre = ((y0 + y1) // 2, (x0 + x1) // 2)
    assert changed[centre]
    rows, cols = np.nonzero(changed)
    width, height = x1 - x0, y1 - y0
    assert cols.min() > x0 - 0.5 * width and cols.max() < x1 + 0.5 * width
    assert rows.min() > y0 - 0.8 * height and rows.max() < y1 + 0.5 * height


def test_the_pasted_region_follows_a_tilted_face(models, astronaut, face):
    height, width = astronaut.shape[:2]
    rotation = cv2.getRotationMatrix2D((width / 2, height / 2), 30, 1.0)
    tilted = cv2.warpAffine(astronaut, rotation, (width, height), borderMode=cv2.BORDER_REFLECT)
    points = cv2.transform(face.five_points[None], rotation)[0]
    restored = restore_face(tilted, points, Negative(), 1.0)
    for x, y in points.round().astype(int):
        assert np.abs(restored[y, x].astype(int) - tilted[y, x].astype(int)).max() > 8


def test_strength_zero_keeps_the_image(astronaut, face):
    assert np.array_equal(restore_face(astronaut, face.five_points, Negative(), 0.0), astronaut)


def test_native_side_matches_the_face_scale(face):
    assert native_side(face.five_points * 2) == pytest.approx(2 * native_side(face.five_points), abs=8)
    assert native_side(face.five_points * 100) == 1024
