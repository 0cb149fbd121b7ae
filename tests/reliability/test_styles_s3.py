"""The style library on S3 through real HTTP, and what a storage outage does to the service: a third application
of the session's Ray (``portraits-s3`` under ``/s3``) keeps its styles on moto's S3 server, which the test stops
mid-run and starts again.

While S3 is down: a portrait in a style the service knows and its stages hold is answered 200; the gallery
answers from the last good view; a curator's publish, schedule change and retirement answer a JSON 503
``store_unavailable`` with ``Retry-After``; a style whose LoRA no stage holds answers 503 ``store_unavailable`` too
(its LoRA cannot be read). Once S3 is back, publishing works again and the refused writes left nothing behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import httpx
import pytest
from conftest import RayCluster
from curation import AUTH, manifest_yaml, publish
from reliability_kit import FAST, wait_until
from s3_server import MotoS3, s3_server

APP, PREFIX = "portraits-s3", "/s3"
BUCKET = "studio-styles"
PORTRAIT_TIMEOUT = 120


@pytest.fixture(scope="module")
def s3(ray_cluster: RayCluster) -> Iterator[MotoS3]:
    """moto's S3 where the session's replicas look for it (their environment points fsspec there)."""
    with s3_server(BUCKET, int(ray_cluster.s3_endpoint.rsplit(":", 1)[1])) as server:
        yield server


@pytest.fixture(scope="module")
def api(serve_url: str, app_args: dict, s3: MotoS3, styles_dir: Path) -> Iterator[str]:
    """``/s3``: the service with ``styles_dir`` on S3."""
    from ray import serve

    from serve_app.app import build_app

    fsspec.filesystem("s3").put(str(styles_dir), f"s3://{BUCKET}/styles", recursive=True)
    serve.run(build_app({**app_args, "styles_dir": f"s3://{BUCKET}/styles"}), name=APP, route_prefix=PREFIX)
    try:
        yield serve_url + PREFIX
    finally:
        serve.delete(APP)


def portrait(api: str, image: bytes, style: str) -> httpx.Response:
    files, data = {"image": ("face.png", image)}, {**FAST, "style": style}
    return httpx.post(f"{api}/v1/portraits", files=files, data=data, timeout=PORTRAIT_TIMEOUT)


def gallery(api: str) -> list[str]:
    return [style["versioned_id"] for style in httpx.get(f"{api}/v1/styles", timeout=30).json()]


def assert_store_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "10"


def test_portraits_and_the_gallery_outlive_an_s3_outage_and_writes_wait_for_it(api, s3, sample_face, styles_dir):
    lora = (styles_dir / "film-noir" / "lora.safetensors").read_bytes()
    assert portrait(api, sample_face, "film-noir").json()["style"] == "film-noir@1"  # its stages load it from S3
    shown = gallery(api)
    assert shown == ["film-noir@1", "summer-beach@1", "xmas-sweater@1"]
    statuses = httpx.get(f"{api}/admin/styles", headers=AUTH, timeout=30).json()

    s3.stop()
    try:
        answer = portrait(api, sample_face, "film-noir")
        assert answer.status_code == 200 and answer.json()["style"] == "film-noir@1"
        assert gallery(api) == shown
        assert_store_unavailable(publish(api, manifest_yaml("night-train"), lora))
        patch = {"available_from": "2030-01-01T00:00:00Z"}
        assert_store_unavailable(httpx.patch(f"{api}/admin/styles/film-noir", json=patch, headers=AUTH, timeout=30))
        assert_store_unavailable(httpx.delete(f"{api}/admin/styles/film-noir", headers=AUTH, timeout=30))
        assert_store_unavailable(portrait(api, sample_face, "summer-beach"))  # no stage holds its LoRA
    finally:
        s3.start()
    assert httpx.get(f"{api}/admin/styles", headers=AUTH, timeout=30).json() == statuses  # the refusals changed nothing
    assert portrait(api, sample_face, "summer-beach").status_code == 200
    wait_until(lambda: publish(api, manifest_yaml("night-train"), lora).status_code == 201, within_s=30)
    assert "night-train@1" in gallery(api)
