"""The upscaler: RRDBNet ×2/×4 through spandrel, face restoration confined to the face region."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from serve_app.pipeline.upscale import upscale_portrait


@pytest.fixture(scope="module")
def portrait(astronaut):
    return cv2.resize(astronaut, (128, 128), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("scale", [2, 4])
def test_super_resolution_size_and_content(models, portrait, scale):
    assert models.upscalers[scale].scale == scale
    upscaled = upscale_portrait(models.upscalers, models.face_restorer, portrait, [], scale)
    assert upscaled.shape == (128 * scale, 128 * scale, 3)
    # the tiny RRDBNet is a nearest-neighbour upscaler plus a small random residual: the picture survives
    nearest = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    assert np.abs(upscaled.astype(int) - nearest.astype(int)).mean() < 25


def test_face_restoration_changes_the_face_region_only(models, astronaut, portrait):
    face = models.faces.detect(astronaut)[0].scaled(128 / astronaut.shape[0])
    plain = upscale_portrait(models.upscalers, models.face_restorer, portrait, [], 2)
    restored = upscale_portrait(models.upscalers, models.face_restorer, portrait, [face.five_points], 2)
    x0, y0, x1, y1 = (round(2 * v) for v in face.box)
    assert not np.array_equal(plain[y0:y1, x0:x1], restored[y0:y1, x0:x1])
    assert np.array_equal(plain[:, : x0 - 10], restored[:, : x0 - 10]) and np.array_equal(plain[y1 + 20 :], restored[y1 + 20 :])


def test_scale_one_keeps_the_size(models, portrait):
    assert upscale_portrait(models.upscalers, models.face_restorer, portrait, [], 1).shape == portrait.shape
