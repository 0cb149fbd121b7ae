"""Group portraits in the pipeline, without Ray: references checked per person, the style's group priors, the
layout's masks per person left to right, fusion and scoring per person, and each identity kept in its own region.

Per-person locality, measured here (tiny profile, the derived group priors, 128 px, 20 DDIM steps, t1 = 0.3, λ = 1,
3 candidates; ``baselines.person_locality``): person i's effect on the final latents (the blend against the blend
with M_i emptied) outside their own mask, as a share of it inside, 0.0049 and 0.0108 for P = 2, 0.0037, 0.0063 and
0.0047 for P = 3; inside the other people's masks 0.0049 and 0.0108, and 0.0045, 0.0063 and 0.0051.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from conftest import REPO, png_bytes
from group_quality import face_crops, group_photo

from serve_app.jobs.images import pack_images, unpack_images
from serve_app.pipeline.baselines import person_locality
from serve_app.pipeline.errors import InvalidImageError, InvalidParameterError, NoFaceError, SamePersonError
from serve_app.pipeline.fusion import IDENTITY_SWAP, PLACED_ON_FACE, Candidate, Fused, FusionRanker, face_region
from serve_app.pipeline.layout import MASK_FROM_FACE, MASK_FROM_PRIOR, face_region_masks
from serve_app.pipeline.masks import face_ellipse, prior_ellipse
from serve_app.pipeline.preprocess import preprocess_people
from serve_app.pipeline.sampling import SamplingPlan
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import PriorFaceMask, StyleManifest

SIDE, LATENT = 256, 32


@pytest.fixture(scope="module")
def people(models, group_faces):
    return preprocess_people(models, group_faces)


@pytest.fixture(scope="module")
def side_by_side(models, astronaut) -> np.ndarray:
    """A two-person picture of the first two people of ``group_faces``: each face, tightly cropped, in one half of
    a SIDE² image (large enough for a generated portrait of two)."""
    left = face_crops(astronaut, models.faces, 1, reach=1.2, side=SIDE // 2)[0]
    right = face_crops(group_photo(), models.faces, 6, reach=1.2, side=SIDE // 2)[0]
    return np.pad(np.concatenate([left, right], axis=1), ((SIDE // 4, SIDE // 4), (0, 0), (0, 0)), mode="edge")


def test_each_person_is_preprocessed_in_order(models, group_faces, people):
    assert len(people) == 3
    alone = preprocess_people(models, group_faces[1:2])[0]
    np.testing.assert_array_equal(people[1].recognition_descriptor, alone.recognition_descriptor)


def test_the_same_person_twice_is_refused_naming_the_second_image(models, group_faces, astronaut):
    mirrored = png_bytes(astronaut[:, ::-1].copy())  # dlib scores the astronaut and her mirror image 0.81 alike
    with pytest.raises(SamePersonError) as refused:
        preprocess_people(models, [group_faces[0], group_faces[1], mirrored])
    assert (refused.value.code, refused.value.http_status) == ("same_person", 422)
    assert list(refused.value.fields) == ["image[2]"] and "images 1 and 3" in refused.value.message


def test_a_reference_without_a_face_is_named(models, group_faces):
    with pytest.raises(NoFaceError) as refused:
        preprocess_people(models, [group_faces[0], png_bytes(skimage.data.chelsea())])
    assert (refused.value.code, refused.value.http_status) == ("no_face", 422)
    assert list(refused.value.fields) == ["image[1]"] and refused.value.message.startswith("image 2 of 2: ")


@pytest.mark.parametrize("count", [0, 5])
def test_one_to_four_people(models, group_faces, count):
    with pytest.raises(InvalidParameterError) as refused:
        preprocess_people(models, (group_faces * 2)[:count])
    assert refused.value.http_status == 422 and "1 to 4" in refused.value.message


def fit_in_a_row(masks: list[PriorFaceMask]) -> bool:
    """Grown by MASK_GROWTH (1.25), the ellipses stay in the picture and neighbours at most touch."""
    inside = all(1.25 * m.radius_x <= m.center_x + 1e-9 and m.center_x + 1.25 * m.radius_x <= 1 + 1e-9 for m in masks)
    apart = all(b.center_x - a.center_x >= 1.25 * (a.radius_x + b.radius_x) - 1e-9 for a, b in zip(masks, masks[1:]))
    return inside and apart


def test_group_priors_run_left_to_right_and_a_style_may_declare_its_own():
    manifest = StyleManifest(id="s", title="S", prompt_template="{subject}")
    for count in (2, 3, 4):
        masks = manifest.face_masks(count)
        centres = [mask.center_x for mask in masks]
        assert len(masks) == count and centres == sorted(centres) and fit_in_a_row(masks)
    declared = [PriorFaceMask(center_x=0.3, center_y=0.5), PriorFaceMask(center_x=0.7, center_y=0.4)]
    declaring = StyleManifest(id="s", title="S", prompt_template="{subject}", group_face_masks={2: declared})
    assert declaring.face_masks(2) == declared
    for style in StyleCatalog(REPO / "styles").list():  # the demo styles declare their own, which fit too
        for count in (2, 3, 4):
            masks = style.manifest.face_masks(count)
            assert masks != manifest.face_masks(count) and fit_in_a_row(masks)
    with pytest.raises(ValueError, match="needs 3 ellipses"):
        StyleManifest(id="s", title="S", prompt_template="{subject}", group_face_masks={3: declared})
    with pytest.raises(ValueError, match="left to right"):
        StyleManifest(id="s", title="S", prompt_template="{subject}", group_face_masks={2: declared[::-1]})


def test_the_layout_gives_the_faces_it_finds_to_the_people_left_to_right(models, side_by_side):
    priors = [prior_ellipse(SIDE, (x, 0.4), (0.15, 0.2)) for x in (0.25, 0.75)]
    masks, source = face_region_masks(models.faces, side_by_side, priors, LATENT)
    assert source == MASK_FROM_FACE and masks.shape == (2, LATENT, LATENT)
    for mask, face in zip(masks, sorted(models.faces.detect(side_by_side), key=lambda face: face.box[0])):
        (cx, cy), _ = face_ellipse(face)
        assert mask[int(cy * LATENT / SIDE), int(cx * LATENT / SIDE)] > 0.9
    assert masks[0, :, LATENT // 2 :].max() < 0.5 and masks[1, :, : LATENT // 2].max() < 0.5
    # with fewer faces than people, the priors, whole
    cat = cv2.resize(skimage.data.chelsea(), (SIDE, SIDE))
    assert face_region_masks(models.faces, cat, priors, LATENT)[1] == MASK_FROM_PRIOR
    assert face_region_masks(models.faces, side_by_side, [*priors, priors[0]], LATENT)[1] == MASK_FROM_PRIOR


def test_each_person_is_fused_onto_their_own_face_and_scored_against_everyone(models, people, side_by_side):
    ranker = FusionRanker.of(models)
    halves = np.zeros((2, LATENT, LATENT), np.float32)
    halves[0, :, : LATENT // 2], halves[1, :, LATENT // 2 :] = 1, 1
    candidate = Candidate(side_by_side, 1, halves)
    [portrait] = ranker.rank([candidate], people[:2], top_k=1)
    assert portrait.accepted and [p.placement for p in portrait.people] == [PLACED_ON_FACE] * 2
    assert all(p.identity_score > 0.6 and p.bleed < 0.5 for p in portrait.people)
    assert portrait.identity_score == min(p.identity_score for p in portrait.people)
    # scored as it is for the people given the other way round: each face is more like the other's reference
    faces = sorted(models.faces.detect_generated(side_by_side, people=2), key=lambda face: face.box[0])
    regions = tuple(face_region(face.five_points, SIDE) for face in faces)
    unfused = Fused(side_by_side, (PLACED_ON_FACE,) * 2, regions, None)
    swapped = ranker.scored(candidate, unfused, [people[1].recognition_descriptor, people[0].recognition_descriptor])
    assert swapped.rejected == IDENTITY_SWAP and swapped.identity_score > 0.0
    assert all(p.bleed > p.identity_score for p in swapped.people)


def test_a_group_candidate_with_more_faces_than_people_is_rejected(models, people, side_by_side):
    halves = np.ones((1, LATENT, LATENT), np.float32)
    [portrait] = FusionRanker.of(models).rank([Candidate(side_by_side, 1, halves)], people[:1], top_k=1)
    assert (portrait.rejected, portrait.identity_score) == ("several_faces", 0.0)


@pytest.mark.parametrize("count", [2, 3])
def test_each_identity_stays_in_its_own_mask(models, people, count):
    """Per-person locality (the figures are in the module's docstring): under 5 % of a person's effect is outside
    their own mask."""
    plan = SamplingPlan(
        "portrait of friends in fedoras", "blurry",
        tuple(torch.from_numpy(p.identity_embedding) for p in people[:count]), (1, 2, 3), 128, 20, 7.5, 1.0, 0.3,
    )
    priors = [prior_ellipse(128, (mask.center_x, mask.center_y), (mask.radius_x, mask.radius_y))
              for mask in StyleManifest(id="s", title="S", prompt_template="{subject}").face_masks(count)]
    found = person_locality(models.diffusion, models.faces, plan, priors)
    assert len(found) == count
    assert all(person.outside_own_mask_ratio < 0.05 and person.in_others_masks_ratio < 0.05 for person in found)


def test_a_jobs_images_pack_into_one_blob_one_image_as_itself(group_faces):
    assert pack_images(group_faces[:1]) == group_faces[0]
    assert unpack_images(pack_images(group_faces)) == tuple(group_faces)
    assert unpack_images(b"\x89PNG not really") == (b"\x89PNG not really",)
    for hostile in (b"PSGROUP1\n[1, 2]\nabc" + b"x", b"PSGROUP1\nnot json\n", b"PSGROUP1\n[1,1,1,1,1]\nabcde"):
        with pytest.raises(InvalidImageError):
            unpack_images(hostile)
