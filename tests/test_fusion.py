"""The fusion ranker: identity scores order faces, fusion carries the reference identity, K always returned."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from conftest import packaged_image

from serve_app.pipeline.fusion import PLACED_BY_LAYOUT, PLACED_ON_FACE, Candidate, FusionRanker
from serve_app.pipeline.masks import prior_ellipse, soft_ellipse_mask
from serve_app.pipeline.preprocess import preprocess

SIDE = 256


@pytest.fixture(scope="module")
def reference(models, astronaut_png):
    return preprocess(models, astronaut_png)


@pytest.fixture(scope="module")
def ranker(models):
    return FusionRanker.of(models)


def on_canvas(image: np.ndarray, side: int = SIDE) -> np.ndarray:
    canvas = np.full((side, side, 3), 128, np.uint8)
    h, w = image.shape[:2]
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas


@pytest.fixture(scope="module")
def same_person(astronaut):
    return cv2.resize(astronaut[10:250, 105:345], (SIDE, SIDE), interpolation=cv2.INTER_AREA)  # a portrait crop


@pytest.fixture(scope="module")
def other_person():
    return on_canvas(cv2.resize(packaged_image("Tom_Hanks_54745.png"), (160, 160)))


@pytest.fixture(scope="module")
def no_face():
    return cv2.resize(skimage.data.chelsea(), (SIDE, SIDE))


def test_scores_order_same_person_above_another_face_above_none(ranker, reference, same_person, other_person, no_face):
    descriptor = reference.recognition_descriptor
    same, same_face, same_reason = ranker.score(same_person, descriptor)
    other, other_face, other_reason = ranker.score(other_person, descriptor)
    none, none_face, none_reason = ranker.score(no_face, descriptor)
    assert same_reason is None and other_reason is None and same_face and other_face
    assert (none, none_face, none_reason) == (0.0, None, "no_face")
    assert same > 0.6 > other > none


def mask_for(side: int) -> np.ndarray:
    return soft_ellipse_mask(side, prior_ellipse(side, (0.5, 0.45), (0.2, 0.26)))


def test_fusion_carries_the_reference_identity_onto_another_face(ranker, reference, other_person):
    descriptor = reference.recognition_descriptor
    before, _, _ = ranker.score(other_person, descriptor)
    candidate = Candidate(image=other_person, seed=1, masks=mask_for(SIDE)[None])
    fused = ranker.fuse(candidate, [reference])
    after, _, reason = ranker.score(fused.image, descriptor, fused.regions[0])
    assert (fused.placements, fused.broken, reason) == ((PLACED_ON_FACE,), None, None)
    assert after > before + 0.1


def test_faceless_candidate_gets_the_face_where_the_layout_mask_puts_it(ranker, reference, no_face):
    candidate = Candidate(image=no_face, seed=1, masks=mask_for(SIDE)[None])
    fused = ranker.fuse(candidate, [reference])
    assert (fused.placements, fused.broken) == ((PLACED_BY_LAYOUT,), None)
    assert np.array_equal(fused.image[:20, :20], no_face[:20, :20])  # outside the mask nothing changes
    assert not np.array_equal(fused.image, no_face)
    score, face, reason = ranker.score(fused.image, reference.recognition_descriptor, fused.regions[0])
    assert reason is None and score > 0.5  # the placed face is found again and recognised


def test_rank_returns_k_best_first_and_flags_rejects(ranker, reference, astronaut, same_person, other_person):
    face = astronaut[63:190, 159:286]  # her face with a 20-px margin
    half = cv2.resize(face, (SIDE // 2, SIDE // 2), interpolation=cv2.INTER_AREA)
    twins = on_canvas(np.concatenate([half, half[:, ::-1]], axis=1))  # several faces: broken, rejected
    candidates = [
        Candidate(image=twins, seed=1, masks=mask_for(SIDE)[None]),
        Candidate(image=other_person, seed=2, masks=mask_for(SIDE)[None]),
        Candidate(image=same_person, seed=3, masks=mask_for(SIDE)[None]),
    ]
    ranked = ranker.rank(candidates, [reference], top_k=3)
    assert [p.seed for p in ranked][-1] == 1
    assert ranked[-1].rejected == "several_faces" and ranked[-1].identity_score == 0.0
    assert all(p.accepted for p in ranked[:2])
    assert ranked[0].identity_score >= ranked[1].identity_score
    assert len(ranker.rank(candidates, [reference], top_k=2)) == 2
