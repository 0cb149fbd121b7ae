"""tiny-commercial through real HTTP: a second application of the session's Ray (``portraits-commercial`` under
``/commercial``) runs the commercial code paths — the real MediaPipe detector, face mesh and person matte, Plus-face
identity from a CLIP tower, AuraFace-signature ranking, Open-NSFW — and answers like the tiny profile: portraits
for a face (each saying which recognizer judged it), a JSON 422 ``no_face`` for a photo without one, and a job that
runs to its result."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import pytest
import skimage.data
from conftest import png_bytes
from PIL import Image

APP, PREFIX = "portraits-commercial", "/commercial"
FAST = {"num_candidates": "2", "top_k": "2", "seed": "13", "steps": "4", "size": "64", "upscale": "2"}
JUDGE = "auraface-v1-tiny-random"


@pytest.fixture(scope="module")
def api(serve_url: str, app_args: dict, styles_dir) -> Iterator[str]:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app({**app_args, "profile": "tiny-commercial", "styles_dir": str(styles_dir)}), name=APP,
              route_prefix=PREFIX)
    try:
        yield serve_url + PREFIX
    finally:
        serve.delete(APP)


def portrait(api: str, image: bytes, **fields: str) -> httpx.Response:
    data = {**FAST, "style": "xmas-sweater", **fields}
    return httpx.post(f"{api}/v1/portraits", files={"image": ("face.png", image)}, data=data, timeout=180)


def test_a_face_gets_portraits_judged_by_the_commercial_recognizer(api, sample_face, astronaut_png):
    for face in (sample_face, astronaut_png):
        response = portrait(api, face)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["style"] == "xmas-sweater@1" and len(body["images"]) == 2
        for image in body["images"]:
            assert image["identity_judge"] == JUDGE
            with Image.open(io.BytesIO(base64.b64decode(image["image_base64"]))) as png:
                assert png.size == (128, 128)


def test_a_photo_without_a_face_is_a_json_422(api):
    response = portrait(api, png_bytes(skimage.data.chelsea()))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "no_face"


def test_a_job_runs_to_its_result(api, sample_face):
    submitted = httpx.post(f"{api}/v1/jobs", files={"image": ("face.png", sample_face)},
                           data={**FAST, "style": "film-noir"}, timeout=60)
    assert submitted.status_code == 202, submitted.text
    url = f"{api}/v1/jobs/{submitted.json()['id']}"
    job = submitted.json()
    for _ in range(20):  # each GET holds its answer until the job changes, up to 10 s
        if job["status"] not in ("queued", "running"):
            break
        job = httpx.get(url, headers={"Prefer": "wait=10"}, timeout=30).json()
    assert job["status"] == "succeeded", job
    assert {image["identity_judge"] for image in job["result"]["images"]} == {JUDGE}
