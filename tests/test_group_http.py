"""Group portraits through real HTTP on the session's app: two and three real people in one request (multipart's
repeated ``image``, JSON's ``images_base64``, a job), each portrait with one score per person and each person's
mask, and what each wrong group answers."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
import skimage.data
from conftest import png_bytes
from PIL import Image

pytestmark = pytest.mark.usefixtures("serve_url")
# Large enough for dlib to find the faces fused into a portrait of two or three at the generated size.
GROUP = {"style": "film-noir", "num_candidates": "2", "top_k": "2", "seed": "5", "size": "256", "upscale": "1"}


def post_group(url: str, faces: list[bytes], path: str = "/v1/portraits", **fields) -> httpx.Response:
    files = [("image", (f"person{i}.png", face, "image/png")) for i, face in enumerate(faces)]
    return httpx.post(f"{url}{path}", files=files, data={**GROUP, **fields}, timeout=180)


def masks_of(image: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(mask)))) for mask in image["layout_masks_base64"]]


def test_two_people_give_two_scores_and_two_masks_per_portrait(serve_url, group_faces):
    response = post_group(serve_url, group_faces[:2], return_masks="true")
    assert response.status_code == 200, response.text
    images = response.json()["images"]
    assert len(images) == 2
    for image in images:
        assert len(image["people"]) == 2
        assert image["identity_score"] == min(person["identity_score"] for person in image["people"])
        assert all(person["bleed"] is not None for person in image["people"])
        left, right = masks_of(image)
        assert left.shape == right.shape == (256, 256)
        # left to right, disjoint: each person's mask weighs on their own side
        assert left[:, :128].mean() > left[:, 128:].mean() and right[:, 128:].mean() > right[:, :128].mean()
        assert (left.astype(int) + right.astype(int)).max() <= 256  # normalised where they touch (PNG rounding)
        union = np.asarray(Image.open(io.BytesIO(base64.b64decode(image["layout_mask_base64"]))))
        # the union is the people's masks' maximum at mask resolution, resized linearly: between their maximum and
        # their sum at image resolution (±1 for PNG rounding)
        assert (union.astype(int) >= np.maximum(left, right).astype(int) - 1).all()
        assert (union.astype(int) <= left.astype(int) + right.astype(int) + 1).all()
    accepted = [image for image in images if image["rejected"] is None]
    assert accepted and all(0 < image["identity_score"] <= 1 for image in accepted)


def test_three_people_by_json(serve_url, group_faces):
    payload = {**GROUP, "images_base64": [base64.b64encode(face).decode() for face in group_faces]}
    response = httpx.post(f"{serve_url}/v1/portraits", json=payload, timeout=180)
    assert response.status_code == 200, response.text
    assert all(len(image["people"]) == 3 for image in response.json()["images"])
    assert all(image["layout_masks_base64"] is None for image in response.json()["images"])


def test_one_image_in_a_list_is_the_single_face_request(serve_url, group_faces):
    single = {**GROUP, "size": "128"}
    as_list = httpx.post(f"{serve_url}/v1/portraits", timeout=180,
                         json={**single, "images_base64": [base64.b64encode(group_faces[0]).decode()]})
    as_field = httpx.post(f"{serve_url}/v1/portraits", timeout=180,
                          json={**single, "image_base64": base64.b64encode(group_faces[0]).decode()})
    assert as_list.status_code == as_field.status_code == 200
    portraits = [[i["image_base64"] for i in response.json()["images"]] for response in (as_list, as_field)]
    assert portraits[0] == portraits[1]
    assert all(len(image["people"]) == 1 and image["people"][0]["bleed"] is None for image in as_list.json()["images"])


def test_a_group_job_succeeds_with_every_persons_scores_and_masks(serve_url, group_faces):
    submitted = post_group(serve_url, group_faces[:2], path="/v1/jobs", return_masks="true")
    assert submitted.status_code == 202, submitted.text
    for _ in range(10):
        job = httpx.get(f"{serve_url}{submitted.headers['location']}", headers={"prefer": "wait=30"}, timeout=60).json()
        if job["status"] not in ("queued", "running"):
            break
    assert job["status"] == "succeeded", job
    synchronous = post_group(serve_url, group_faces[:2], return_masks="true").json()
    assert [i["people"] for i in job["result"]["images"]] == [i["people"] for i in synchronous["images"]]
    assert all(len(masks_of(image)) == 2 for image in job["result"]["images"])


def error_of(response: httpx.Response) -> tuple[int, str, list[str]]:
    body = response.json()["error"]
    return response.status_code, body["code"], [field["field"] for field in body.get("fields") or []]


def test_wrong_groups_get_clear_422s(serve_url, group_faces, astronaut):
    cat = png_bytes(skimage.data.chelsea())
    mirrored = png_bytes(astronaut[:, ::-1].copy())
    # a reference with no face: which one
    assert error_of(post_group(serve_url, [group_faces[0], cat])) == (422, "no_face", ["image[1]"])
    # the same person twice (the astronaut and her mirror image score 0.81 alike; the threshold is 0.75)
    assert error_of(post_group(serve_url, [group_faces[0], group_faces[1], mirrored])) == (
        422, "same_person", ["image[2]"]
    )
    # more than four people, by multipart and by JSON
    assert error_of(post_group(serve_url, group_faces * 2)) == (422, "invalid_parameter", ["image"])
    payload = {**GROUP, "images_base64": [base64.b64encode(face).decode() for face in group_faces * 2]}
    assert error_of(httpx.post(f"{serve_url}/v1/portraits", json=payload, timeout=60)) == (
        422, "invalid_parameter", ["images_base64"]
    )
    # both ways of sending images, or neither
    both = {**payload, "images_base64": payload["images_base64"][:2], "image_base64": payload["images_base64"][0]}
    assert error_of(httpx.post(f"{serve_url}/v1/portraits", json=both, timeout=60))[:2] == (422, "invalid_parameter")
    assert error_of(httpx.post(f"{serve_url}/v1/portraits", json=GROUP, timeout=60))[:2] == (422, "invalid_parameter")
    # one bad image among good ones: named, as a documented error
    assert error_of(post_group(serve_url, [group_faces[0], b"not an image"])) == (400, "invalid_image", ["image[1]"])
    bad_base64 = {**GROUP, "images_base64": [payload["images_base64"][0], "%%%"]}
    assert error_of(httpx.post(f"{serve_url}/v1/portraits", json=bad_base64, timeout=60))[:2] == (400, "invalid_image")
