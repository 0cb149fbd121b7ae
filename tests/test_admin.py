"""Style curation through the admin API of the running service: live publishing, versions, schedule,
retirement, authentication, and refused uploads that leave the library untouched."""

from __future__ import annotations

import base64
import io
import pickle
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import ADMIN_TOKEN
from PIL import Image
from curation import AUTH, manifest_yaml, publish
from safetensors.torch import save
from starlette.requests import Request

from serve_app.api.dependencies import require_admin
from serve_app.errors import AdminDisabledError
from serve_app.pipeline.models import tiny

pytestmark = pytest.mark.usefixtures("serve_url")
SMALL = {"num_candidates": "2", "top_k": "1", "seed": "5"}


def portrait(url: str, face: bytes, style: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/portraits", files={"image": ("f.png", face)}, data={"style": style, **SMALL}, timeout=240)


@pytest.fixture(scope="module")
def lora(models) -> bytes:
    return save(tiny.random_style_lora(models.diffusion.unet, seed=11))


def library(url: str) -> list[dict]:
    return httpx.get(f"{url}/admin/styles", headers=AUTH).json()


def test_admin_needs_the_token(serve_url):
    assert httpx.get(f"{serve_url}/admin/styles").status_code == 401
    wrong = httpx.get(f"{serve_url}/admin/styles", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (403, "forbidden")
    assert httpx.get(f"{serve_url}/admin/styles", headers=AUTH).status_code == 200


def test_admin_is_disabled_without_a_configured_token(monkeypatch):
    monkeypatch.delenv("STUDIO_ADMIN_TOKEN", raising=False)
    request = Request({"type": "http", "headers": [(b"authorization", AUTH["Authorization"].encode())]})
    with pytest.raises(AdminDisabledError):
        require_admin(request)


def test_publish_live_then_version_then_retire(serve_url, sample_face, lora):
    flowing = []
    worker = threading.Thread(target=lambda: flowing.append(portrait(serve_url, sample_face, "film-noir")))
    worker.start()
    created = publish(serve_url, manifest_yaml(), lora)
    assert created.status_code == 201, created.text
    assert created.json()["versioned_id"] == "snow-globe@1" and len(created.json()["sha256"]) == 64
    worker.join()
    assert flowing[0].status_code == 200  # the request in flight was not disturbed

    assert "snow-globe@1" in {s["versioned_id"] for s in httpx.get(f"{serve_url}/v1/styles").json()}
    first = portrait(serve_url, sample_face, "snow-globe")
    assert first.status_code == 200 and first.json()["style"] == "snow-globe@1"

    assert publish(serve_url, manifest_yaml(negative_prompt="blurry"), lora).json()["versioned_id"] == "snow-globe@2"
    assert portrait(serve_url, sample_face, "snow-globe").json()["style"] == "snow-globe@2"
    assert portrait(serve_url, sample_face, "snow-globe@1").json()["style"] == "snow-globe@1"

    retired = httpx.delete(f"{serve_url}/admin/styles/snow-globe", headers=AUTH)
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    refused = portrait(serve_url, sample_face, "snow-globe")
    assert (refused.status_code, refused.json()["error"]["code"]) == (410, "style_retired")
    assert "snow-globe" not in {s["id"] for s in httpx.get(f"{serve_url}/v1/styles").json()}
    assert portrait(serve_url, sample_face, "film-noir").status_code == 200


def test_schedule_window_through_patch(serve_url, sample_face, lora):
    assert publish(serve_url, manifest_yaml("holiday-lights"), lora).status_code == 201
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    patched = httpx.patch(f"{serve_url}/admin/styles/holiday-lights", json={"available_from": later}, headers=AUTH)
    assert patched.status_code == 200 and patched.json()["status"] == "scheduled"
    refused = portrait(serve_url, sample_face, "holiday-lights")
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "style_scheduled")
    cleared = httpx.patch(f"{serve_url}/admin/styles/holiday-lights", json={"available_from": None}, headers=AUTH)
    assert cleared.json()["status"] == "live"
    naive = httpx.patch(f"{serve_url}/admin/styles/holiday-lights", json={"available_from": "2027-01-01T00:00:00"},
                        headers=AUTH)
    assert naive.status_code == 422
    missing = httpx.patch(f"{serve_url}/admin/styles/nothing-here", json={}, headers=AUTH)
    assert missing.status_code == 404


def test_duplicate_keys_and_unix_times_are_refused_by_name(serve_url):
    duplicate = publish(serve_url, manifest_yaml("bad-one") + b"title: Again\n", b"never read")
    error = duplicate.json()["error"]
    assert (duplicate.status_code, error["code"]) == (422, "invalid_style")
    assert error["fields"] == [{"field": "manifest", "message": "manifest: duplicate key 'title' (line 4)"}]
    numeric = publish(serve_url, manifest_yaml("bad-one", available_from=0), b"never read")
    error = numeric.json()["error"]
    assert (numeric.status_code, error["code"]) == (422, "invalid_style")
    assert [field["field"] for field in error["fields"]] == ["manifest.available_from"]
    assert "RFC 3339" in error["fields"][0]["message"]
    for value in (0, 1700000000.5, "0", "1700000000"):
        patched = httpx.patch(f"{serve_url}/admin/styles/film-noir", json={"available_until": value}, headers=AUTH)
        error = patched.json()["error"]
        assert (patched.status_code, error["code"]) == (422, "invalid_parameter"), value
        assert error["message"].startswith("available_until: Input should be an RFC 3339 date-time"), value
        assert [field["field"] for field in error["fields"]] == ["available_until"]


# Each refused upload: what is sent, and the field its 422 names (the LoRA's are refused on a layout replica).
REFUSED = {
    "pickle": lambda lora: (manifest_yaml("bad-one"), pickle.dumps({"weights": [1, 2]}), "lora.safetensors"),
    "not .safetensors name": lambda lora: (manifest_yaml("bad-one"), lora, "lora.pt"),
    "truncated": lambda lora: (manifest_yaml("bad-one"), lora[:-64], "lora.safetensors"),
    "wrong keys": lambda lora: (manifest_yaml("bad-one"), save({"unet.nope.to_q.lora.down.weight": __import__("torch").zeros(4, 8)}), "lora.safetensors"),
    "oversize": lambda lora: (manifest_yaml("bad-one"), lora + bytes(1024 * 1024), "lora.safetensors"),
    "bad manifest": lambda lora: (manifest_yaml("bad-one", prompt_template="no placeholder"), lora, "lora.safetensors"),
    "naive window": lambda lora: (manifest_yaml("bad-one", available_from="2027-01-01T00:00:00"), lora, "lora.safetensors"),
}
REFUSED_FIELD = {"bad manifest": "manifest.prompt_template", "naive window": "manifest.available_from"}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_uploads_are_422_and_change_nothing(serve_url, live_styles_dir, lora, case):
    before_api = library(serve_url)
    before_files = sorted(str(p.relative_to(live_styles_dir)) for p in live_styles_dir.rglob("*"))
    manifest, data, name = REFUSED[case](lora)
    response = publish(serve_url, manifest, data, lora_name=name)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_style" and response.json()["error"]["message"]
    assert [field["field"] for field in response.json()["error"]["fields"]] == [REFUSED_FIELD.get(case, "lora")]
    assert library(serve_url) == before_api
    assert sorted(str(p.relative_to(live_styles_dir)) for p in live_styles_dir.rglob("*")) == before_files


def test_a_scheduled_style_is_previewed_from_the_sample_face(serve_url, sample_face, lora):
    later = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    assert publish(serve_url, manifest_yaml("next-season", available_from=later), lora).status_code == 201
    refused = portrait(serve_url, sample_face, "next-season")
    assert (refused.status_code, refused.json()["error"]["code"]) == (404, "style_scheduled")

    url = f"{serve_url}/admin/styles/next-season/preview"
    assert httpx.post(url, json={}).status_code == 401
    preview = httpx.post(url, json={"seed": 3}, headers=AUTH, timeout=240)
    assert preview.status_code == 200, preview.text
    body = preview.json()
    assert (body["style"], body["seed"], len(body["images"])) == ("next-season@1", 3, 1)
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]["image_base64"]))) as image:
        assert image.size == (128, 128)  # the style's size, not upscaled
    again = httpx.post(url, json={"version": 1, "seed": 3}, headers=AUTH, timeout=240).json()
    assert again["images"][0]["image_base64"] == body["images"][0]["image_base64"]
    missing = httpx.post(url, json={"version": 9}, headers=AUTH)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "unknown_style")


def test_rank_too_large_is_refused(serve_url, models):
    big = save(tiny.random_style_lora(models.diffusion.unet, seed=12, rank=32))
    response = publish(serve_url, manifest_yaml("too-big"), big)
    assert response.status_code == 422 and "rank 32" in response.json()["error"]["message"]


def test_curator_cli_validates_and_publishes(serve_url, tmp_path, lora, capsys):
    from serve_app.__main__ import main

    folder = tmp_path / "cli-style"
    folder.mkdir()
    (folder / "style.yaml").write_bytes(manifest_yaml("cli-style"))
    (folder / "lora.safetensors").write_bytes(lora)
    assert main(["styles", "validate", str(folder)]) == 0
    assert "valid style 'cli-style'" in capsys.readouterr().out
    assert main(["styles", "publish", str(folder), "--url", serve_url, "--token", "wrong"]) == 2
    assert "forbidden" in capsys.readouterr().err
    assert main(["styles", "publish", str(folder), "--url", serve_url, "--token", ADMIN_TOKEN]) == 0
    assert '"versioned_id": "cli-style@1"' in capsys.readouterr().out

    (folder / "lora.safetensors").write_bytes(pickle.dumps({"not": "safetensors"}))
    assert main(["styles", "validate", str(folder)]) == 2
    assert "pickle" in capsys.readouterr().err
