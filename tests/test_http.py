"""The Serve graph through real HTTP on 127.0.0.1 (one Ray instance for the whole test session)."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import skimage.data
from conftest import metric_total, png_bytes
from PIL import Image

from serve_app.pipeline.stages import STAGES

pytestmark = pytest.mark.usefixtures("serve_url")
SMALL = {"num_candidates": "2", "top_k": "2", "seed": "3"}


def post_multipart(url: str, image: bytes, timeout: float = 120, headers=None, **fields) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/portraits",
        files={"image": ("face.png", image, "image/png")},
        data=fields,
        headers=headers,
        timeout=timeout,
    )


def assert_portraits(body: dict, k: int, side: int) -> None:
    assert len(body["images"]) == k
    scores = [image["identity_score"] for image in body["images"]]
    assert scores == sorted(scores, reverse=True)
    for image in body["images"]:
        with Image.open(io.BytesIO(base64.b64decode(image["image_base64"]))) as png:
            assert png.format == "PNG" and png.size == (side, side)
    assert set(body["timings"]) == set(STAGES) and all(ms > 0 for ms in body["timings"].values())
    assert body["request_id"]


def test_multipart_request(serve_url, sample_face):
    response = post_multipart(serve_url, sample_face, style="xmas-sweater", **SMALL)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["style"] == "xmas-sweater@1" and body["seed"] == 3
    assert_portraits(body, k=2, side=256)
    assert response.headers["x-request-id"] == body["request_id"]


def test_json_request(serve_url, sample_face):
    payload = {"style": "film-noir", "image_base64": base64.b64encode(sample_face).decode(), "num_candidates": 3,
               "top_k": 1, "upscale": 4, "seed": 11}
    response = httpx.post(f"{serve_url}/v1/portraits", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    assert_portraits(response.json(), k=1, side=512)


def test_event_stream_orders_stages_then_result(serve_url, sample_face):
    events = []
    with httpx.stream(
        "POST", f"{serve_url}/v1/portraits", files={"image": ("f.png", sample_face)}, data={"style": "summer-beach", **SMALL},
        headers={"Accept": "text/event-stream"}, timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    stage_events = [(name, data["stage"]) for name, data in events if name.startswith("stage_")]
    assert stage_events == [(kind, stage) for stage in STAGES for kind in ("stage_started", "stage_finished")]
    steps = [data for name, data in events if name == "step"]
    assert [step["step"] for step in steps] == list(range(1, len(steps) + 1))
    assert {step["total"] for step in steps} == {len(steps)} and len(steps) >= 2
    blend_start = events.index(("stage_started", {"stage": "blend"}))
    blend_end = events.index(("stage_finished", {"stage": "blend"}))
    assert all(blend_start < i < blend_end for i, (name, _) in enumerate(events) if name == "step")
    assert events[-1][0] == "result"
    assert_portraits(events[-1][1], k=2, side=256)


def portraits_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [image["image_base64"] for image in response.json()["images"]]


def test_layout_masks_come_with_the_portraits_when_asked(serve_url, sample_face):
    asked = post_multipart(serve_url, sample_face, style="film-noir", return_masks="true", **SMALL)
    for image in asked.json()["images"]:
        with Image.open(io.BytesIO(base64.b64decode(image["layout_mask_base64"]))) as mask:
            assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (256, 256))  # the portrait's resolution
            pixels = np.asarray(mask)
        assert pixels.max() == 255 and pixels[0, 0] == 0  # full weight on the face, none in the corner
        assert 0.05 < (pixels > 127).mean() < 0.6
    plain = post_multipart(serve_url, sample_face, style="film-noir", **SMALL)
    assert all(image["layout_mask_base64"] is None for image in plain.json()["images"])
    assert portraits_of(plain) == portraits_of(asked)


def test_t1_per_request_overrides_the_styles(serve_url, sample_face):
    default = portraits_of(post_multipart(serve_url, sample_face, style="film-noir", **SMALL))  # the style's t1: 0.3
    assert portraits_of(post_multipart(serve_url, sample_face, style="film-noir", t1="0.3", **SMALL)) == default
    assert portraits_of(post_multipart(serve_url, sample_face, style="film-noir", t1="0.7", **SMALL)) != default
    refused = post_multipart(serve_url, sample_face, style="film-noir", t1="1", **SMALL)
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["field"] == "t1"


def test_styles_health_and_docs(serve_url):
    styles = httpx.get(f"{serve_url}/v1/styles").json()
    assert {"xmas-sweater@1", "film-noir@1", "summer-beach@1"} <= {s["versioned_id"] for s in styles}
    assert all({"steps", "identity_weight", "t1", "size"} <= set(s["defaults"]) for s in styles)
    assert httpx.get(f"{serve_url}/healthz").json() == {"status": "ok"}
    spec = httpx.get(f"{serve_url}/openapi.json").json()
    body = spec["paths"]["/v1/portraits"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert httpx.get(f"{serve_url}/docs").status_code == 200


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128)).save(buffer, format="GIF")
    return buffer.getvalue()


def pixel_bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (9000, 9000)).save(buffer, format="PNG")
    return buffer.getvalue()


BAD_IMAGES = {
    "garbage": (lambda: b"not an image at all" * 50, 400, "invalid_image"),
    "gif": (gif_bytes, 415, "unsupported_image_format"),
    "too many bytes": (lambda: b"\x89PNG" + bytes(3 * 1024 * 1024), 413, "image_too_large"),
    "too many pixels": (pixel_bomb, 413, "image_too_large"),
    "too small": (lambda: png_bytes(np.zeros((40, 40, 3), np.uint8)), 422, "image_too_small"),
    "no face": (lambda: png_bytes(skimage.data.chelsea()), 422, "no_face"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_bad_images_get_documented_errors_and_service_keeps_serving(serve_url, sample_face, case):
    make, status, code = BAD_IMAGES[case]
    response = post_multipart(serve_url, make(), style="film-noir", **SMALL)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]
    assert post_multipart(serve_url, sample_face, style="film-noir", **SMALL).status_code == 200


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"data": {"style": "no-such-style"}, "files": "face"}, 404, "unknown_style"),
        ({"data": {"style": "film-noir", "num_candidates": "2", "top_k": "3"}, "files": "face"}, 422, "invalid_parameter"),
        ({"data": {"style": "film-noir", "upscale": "3"}, "files": "face"}, 422, "invalid_parameter"),
        ({"data": {"style": "film-noir", "num_candidates": "9"}, "files": "face"}, 422, "invalid_parameter"),
        ({"data": {"style": "film-noir"}, "files": {"photo": ("f.png", b"x")}}, 422, "invalid_parameter"),  # no image
        ({"data": {"style": "film-noir"}}, 415, "unsupported_media_type"),  # url-encoded form, no file
        ({"json": {"style": "film-noir", "image_base64": "***"}}, 400, "invalid_image"),
        ({"json": {"style": "film-noir"}}, 422, "invalid_parameter"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ],
)
def test_bad_requests(serve_url, sample_face, request_kwargs, status, code):
    if request_kwargs.get("files") == "face":
        request_kwargs = {**request_kwargs, "files": {"image": ("f.png", sample_face)}}
    response = httpx.post(f"{serve_url}/v1/portraits", timeout=60, **request_kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_eight_concurrent_requests_over_two_styles(serve_url, sample_face):
    styles = ["xmas-sweater", "film-noir"] * 4
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda s: post_multipart(serve_url, sample_face, style=s, **SMALL), styles))
    assert [r.status_code for r in responses] == [200] * 8, [r.text for r in responses if r.status_code != 200]
    assert [r.json()["style"] for r in responses] == [f"{s}@1" for s in styles]


def test_overload_is_503_with_retry_after_and_nothing_is_lost(serve_url, sample_face, app_args):
    count = app_args["max_in_flight"] + 4
    with ThreadPoolExecutor(count) as pool:
        responses = list(pool.map(lambda _: post_multipart(serve_url, sample_face, style="film-noir", **SMALL), range(count)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= app_args["max_in_flight"] and 503 in statuses
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.json()["error"]["code"] == "overloaded" and refused.headers["retry-after"]
    assert post_multipart(serve_url, sample_face, style="film-noir", **SMALL).status_code == 200


def test_returned_images_are_counted_by_outcome(serve_url, metrics_url, sample_face):
    body = post_multipart(serve_url, sample_face, style="film-noir", **SMALL).json()
    outcomes = {image["rejected"] or "accepted" for image in body["images"]}

    def counted() -> bool:
        return all(
            metric_total(metrics_url, "ray_portrait_images_total", stage="fusion", outcome=o) >= 1 for o in outcomes
        )

    deadline = time.monotonic() + 30
    while not counted() and time.monotonic() < deadline:
        time.sleep(1)
    assert counted()


def test_second_request_for_a_style_is_a_cache_hit(serve_url, metrics_url, sample_face):
    post_multipart(serve_url, sample_face, style="summer-beach", **SMALL)
    second = post_multipart(serve_url, sample_face, style="summer-beach", **SMALL).json()
    assert second["lora_cache"] == {"layout": "hit", "blend": "hit"}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        hits = metric_total(metrics_url, "ray_portrait_lora_cache_total", result="hit", stage="blend")
        latency = metric_total(metrics_url, "ray_portrait_stage_latency_ms_count", stage="upscale")
        if hits >= 1 and latency >= 1:
            break
        time.sleep(1)
    assert hits >= 1 and latency >= 1
    assert metric_total(metrics_url, "ray_portrait_lora_cache_total", result="miss", stage="layout") >= 1


def test_the_ingress_replica_loads_no_ml_library_while_serving(serve_url, sample_face):
    """Stage results pass through the ingress as unread object refs: after portraits (JSON and streamed) the
    ingress process has imported no ML library and none of the stages' modules."""
    import ray

    from test_layers import ML_LIBRARIES

    assert post_multipart(serve_url, sample_face, style="film-noir", **SMALL).status_code == 200
    streamed = post_multipart(serve_url, sample_face, headers={"accept": "text/event-stream"}, style="film-noir", **SMALL)
    assert "event: result" in streamed.text
    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#PortraitIngress#" in a["name"]]
    ingress = ray.get_actor(name, namespace="serve")
    loaded = ray.get(ingress.__ray_call__.remote(lambda _: sorted(__import__("sys").modules)))
    heavy = [m for m in loaded if m.split(".")[0] in ML_LIBRARIES]
    stages = [m for m in loaded if m.startswith("deployments.") and m not in ("deployments.stream", "deployments.metrics", "deployments.logs", "deployments.options")]
    assert (heavy, stages) == ([], [])
