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
    upscaled = upscale_portrait(models.upscalers, models.face_restorer, portrait, None, scale)
    assert upscaled.shape == (128 * scale, 128 * scale, 3)
    # the tiny RRDBNet is a nearest-neighbour upscaler plus a small random residual: the picture survives
    nearest = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    assert np.abs(upscaled.astype(int) - nearest.astype(int)).mean() < 25


def test_face_restoration_changes_the_face_region_only(models, portrait):
    box = (40.0, 20.0, 80.0, 70.0)
    plain = upscale_portrait(models.upscalers, models.face_restorer, portrait, None, 2)
    restored = upscale_portrait(models.upscalers, models.face_restorer, portrait, box, 2)
    assert not np.array_equal(plain[40:140, 80:160], restored[40:140, 80:160])
    assert np.array_equal(plain[:, :50], restored[:, :50]) and np.array_equal(plain[180:], restored[180:])


def test_scale_one_keeps_the_size(models, portrait):
    assert upscale_portrait(models.upscalers, models.face_restorer, portrait, None, 1).shape == portrait.shape
