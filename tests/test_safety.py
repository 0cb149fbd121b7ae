"""The output safety check: every fused candidate goes through SD1.5's safety checker before ranking; a flagged
one is rejected as ``unsafe_content`` with its pixels blacked out, and safe candidates fill the K first."""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from serve_app.pipeline.fusion import Candidate, FusionRanker
from serve_app.pipeline.preprocess import preprocess
from serve_app.pipeline.safety import UNSAFE_CONTENT, ClipSafetyChecker

SIDE = 128


def flagging(checker: ClipSafetyChecker) -> ClipSafetyChecker:
    """A copy whose NSFW concept thresholds are below any cosine: it flags every image."""
    model = copy.deepcopy(checker.model)
    model.concept_embeds_weights.data[:] = -2.0
    return ClipSafetyChecker(model, checker.processor)


class FirstUnsafe(ClipSafetyChecker):
    """Flags the first image of every batch, checks the others for real."""

    def flags(self, images):
        return [True] + super().flags(images[1:])


@pytest.fixture(scope="module")
def reference(models, astronaut_png):
    return preprocess(models, astronaut_png)


@pytest.fixture(scope="module")
def candidates(astronaut) -> list[Candidate]:
    portrait = cv2.resize(astronaut[10:250, 105:345], (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    mask = np.zeros((SIDE // 8, SIDE // 8), np.float32)
    return [Candidate(np.roll(portrait, shift, axis=1), seed, mask[None]) for seed, shift in enumerate((0, 3, 6))]


def test_the_tiny_checker_runs_and_flags_nothing(models, candidates):
    # random weights, diffusers' initial thresholds of 1: no cosine exceeds them
    assert models.safety_checker.flags([c.image for c in candidates]) == [False, False, False]
    assert models.safety_checker.flags([]) == []


def test_flagged_candidates_are_rejected_and_blacked_out(models, candidates, reference):
    ranker = FusionRanker(models.faces, models.recognizer, flagging(models.safety_checker), models.face_swapper)
    ranked = ranker.rank(candidates, [reference], top_k=2)
    assert len(ranked) == 2
    assert all(p.rejected == UNSAFE_CONTENT and not p.image.any() and p.identity_score == 0.0 for p in ranked)
    assert all(p.faces_points == [] and p.placement is None for p in ranked)


def test_safe_candidates_fill_the_k_first(models, candidates, reference):
    """Accepted portraits, then other rejects (still portraits), then the blacked-out unsafe ones."""
    cat = cv2.resize(skimage.data.chelsea(), (SIDE, SIDE))
    faceless = Candidate(cat, 9, candidates[0].masks)  # an empty layout mask too: nowhere to put the face
    unsafe_first = FirstUnsafe(models.safety_checker.model, models.safety_checker.processor)
    ranker = FusionRanker(models.faces, models.recognizer, unsafe_first, models.face_swapper)
    ranked = ranker.rank([candidates[0], faceless, candidates[1]], [reference], top_k=3)
    assert [(p.seed, p.rejected) for p in ranked] == [(1, None), (9, "no_face"), (0, UNSAFE_CONTENT)]
    assert not ranked[-1].image.any() and ranked[1].image.any()


def test_the_checker_runs_in_the_models_dtype(models, candidates):
    checker = models.safety_checker
    half = ClipSafetyChecker(copy.deepcopy(checker.model).to(torch.bfloat16), checker.processor)
    assert half.flags([c.image for c in candidates]) == [False, False, False]
