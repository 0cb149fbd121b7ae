"""Hostile curators and clients against the running service: every refused upload, bad token, path parameter or
style name answers a JSON 4xx with its error code and leaves the library byte-identical; a publisher killed
mid-publish leaves no partial version; concurrent publishes get distinct consecutive versions while portraits
flow."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
import yaml
from conftest import ADMIN_TOKEN, REPO
from curation import AUTH, manifest_yaml, publish
from safetensors.torch import save

from reliability_kit import FAST, post_declaring
from serve_app.pipeline.models import tiny
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import MAX_MANIFEST_BYTES, StyleManifest

pytestmark = pytest.mark.usefixtures("serve_url")
ADMIN_TIMEOUT = httpx.Timeout(30.0)
HOSTILE = "hostile"  # the id of refused uploads
PORTRAIT_TIMEOUT = httpx.Timeout(60.0)


def library_snapshot(root: Path) -> dict[str, str]:
    """Every folder and file under the library, files by their SHA-256."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        for path in sorted(root.rglob("*"))
    }


def portrait(url: str, face: bytes, style: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/portraits", files={"image": ("f.png", face)}, data={"style": style, **FAST}, timeout=PORTRAIT_TIMEOUT
    )


def assert_json_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (status, code), response.text[:300]
    assert error["message"]


@pytest.fixture(scope="module")
def lora(models) -> bytes:
    return save(tiny.random_style_lora(models.diffusion.unet, seed=21))


def safetensors_of(header: object, payload: bytes = bytes(64)) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + payload


def offsets_past_the_end(lora: bytes) -> bytes:
    (size,) = struct.unpack("<Q", lora[:8])
    header = json.loads(lora[8 : 8 + size])
    header[next(name for name in header if name != "__metadata__")]["data_offsets"][1] = len(lora)
    return safetensors_of(header, lora[8 + size :])


def one_tensor(**entry) -> bytes:
    fields = {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64], **entry}
    return safetensors_of({"unet.down_blocks.0.attentions.0.proj_in.lora.down.weight": fields})


def torch_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def billion_laughs() -> bytes:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return manifest_yaml(HOSTILE) + "\n".join(lines).encode()


PICKLE = pickle.dumps({"weights": [1, 2, 3]})
Upload = Callable[[bytes], tuple[bytes, bytes, str]]  # the good LoRA → (manifest, LoRA, LoRA file name)


def with_lora(data: bytes | Callable[[bytes], bytes], name: str = "lora.safetensors") -> Upload:
    return lambda lora: (manifest_yaml(HOSTILE), data(lora) if callable(data) else data, name)


def with_manifest(manifest: bytes) -> Upload:
    return lambda lora: (manifest, lora, "lora.safetensors")


REFUSED_UPLOADS = {
    "absurd safetensors header length": with_lora(lambda lora: struct.pack("<Q", 2**63) + lora[8:]),
    "header offsets past the end": with_lora(offsets_past_the_end),
    "truncated LoRA": with_lora(lambda lora: lora[: len(lora) // 2]),
    "empty LoRA": with_lora(b""),
    "header that is not JSON": with_lora(safetensors_of(b"{not json")),
    "pickle named lora.safetensors": with_lora(PICKLE),
    "torch checkpoint named lora.safetensors": with_lora(lambda lora: torch_checkpoint()),
    "pickle named lora.pt": with_lora(PICKLE, "lora.pt"),
    "pickle named lora.bin": with_lora(PICKLE, "lora.bin"),
    "pickle named lora.ckpt": with_lora(PICKLE, "lora.ckpt"),
    "billion laughs manifest": with_manifest(billion_laughs()),
    "recursive alias manifest": with_manifest(manifest_yaml(HOSTILE) + b"tags: &t [*t]\n"),
    "deeply nested manifest": with_manifest(manifest_yaml(HOSTILE) + b"tags: " + b"[" * 50000 + b"]" * 50000),
    "oversize manifest": with_manifest(manifest_yaml(HOSTILE) + b"#" * MAX_MANIFEST_BYTES),
    "manifest in UTF-16": with_manifest(manifest_yaml(HOSTILE).decode().encode("utf-16")),
    "manifest in latin-1": with_manifest(manifest_yaml(HOSTILE) + "description: caf\xe9\n".encode("latin-1")),
    "manifest a YAML list": with_manifest(b"- id: hostile\n- title: Hostile\n"),
    "manifest a scalar": with_manifest(b"hostile"),
    "empty manifest": with_manifest(b""),
    "manifest with a python tag": with_manifest(b"!!python/object/apply:os.system ['touch /tmp/owned']"),
    "manifest with integer keys": with_manifest(manifest_yaml(HOSTILE) + b"1: one\n"),
    "manifest with a huge integer": with_manifest(manifest_yaml(HOSTILE) + b"version: " + b"9" * 5000 + b"\n"),
    "manifest with a duplicate key": with_manifest(manifest_yaml(HOSTILE) + b"prompt_template: '{subject}, again'\n"),
    "manifest with a Unix-time window": with_manifest(manifest_yaml(HOSTILE, available_from=0)),
    **{f"id {bad!r}": with_manifest(manifest_yaml(bad)) for bad in ["../x", "/etc/passwd", "a/b", ".hidden", "Film-Noir"]},
    **{
        f"lora.file {bad!r}": with_manifest(manifest_yaml(HOSTILE, lora={"file": bad}))
        for bad in ["../x", "../x.safetensors", "/etc/passwd", "a/b.safetensors", ".hidden.safetensors"]
    },
    **{
        f"prompt template {bad!r}": with_manifest(
            manifest_yaml(HOSTILE, prompt_template=f"portrait of {{subject}} {bad}")
        )
        for bad in ["{subject.__class__}", "{subject[0]}", "{0}", "{}"]
    },
    **{
        f"header entry {name}": with_lora(data)
        for name, data in {
            "data_offsets a string": one_tensor(data_offsets="ab"),
            "data_offsets too short": one_tensor(data_offsets=[0]),
            "dtype a list": one_tensor(dtype=["F32"]),
            "shape a string": one_tensor(shape="ab"),
            "nested too deep": safetensors_of(b"[" * 100_000 + b"]" * 100_000),
        }.items()
    },
}


@pytest.mark.parametrize("upload", REFUSED_UPLOADS.values(), ids=REFUSED_UPLOADS.keys())
def test_refused_uploads_are_422_and_leave_the_library_byte_identical(serve_url, live_styles_dir, lora, upload):
    before = library_snapshot(live_styles_dir)
    manifest, data, name = upload(lora)
    assert_json_error(publish(serve_url, manifest, data, lora_name=name, timeout=ADMIN_TIMEOUT), 422, "invalid_style")
    assert library_snapshot(live_styles_dir) == before


MALFORMED_FORMS = {
    "no LoRA part": {"files": {"manifest": ("style.yaml", manifest_yaml(HOSTILE))}},
    "no manifest part": {"files": {"lora": ("lora.safetensors", b"x")}},
    "LoRA as a plain field": {"files": {"manifest": ("style.yaml", manifest_yaml(HOSTILE))}, "data": {"lora": "x"}},
    "not multipart": {"json": {"manifest": "id: x", "lora": "x"}},
}


@pytest.mark.parametrize("form", MALFORMED_FORMS)
def test_malformed_upload_forms_are_422(serve_url, live_styles_dir, form):
    before = library_snapshot(live_styles_dir)
    response = httpx.post(f"{serve_url}/admin/styles", headers=AUTH, timeout=ADMIN_TIMEOUT, **MALFORMED_FORMS[form])
    assert_json_error(response, 422, "invalid_parameter")
    assert library_snapshot(live_styles_dir) == before


ROUTES = {
    "GET /admin/styles": ("GET", "/admin/styles"),
    "POST /admin/styles": ("POST", "/admin/styles"),
    "PATCH /admin/styles/film-noir": ("PATCH", "/admin/styles/film-noir"),
    "DELETE /admin/styles/film-noir": ("DELETE", "/admin/styles/film-noir"),
}
CREDENTIALS = {
    "no token": ({}, 401, "unauthorized"),
    "bearer without a token": ({"Authorization": "Bearer"}, 401, "unauthorized"),
    "basic scheme": ({"Authorization": f"Basic {ADMIN_TOKEN}"}, 401, "unauthorized"),
    "wrong token": ({"Authorization": "Bearer not-the-token"}, 403, "forbidden"),
    "token prefix": ({"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, 403, "forbidden"),
}


@pytest.mark.parametrize("credentials", CREDENTIALS)
@pytest.mark.parametrize("route", ROUTES)
def test_admin_routes_need_the_token(serve_url, live_styles_dir, lora, route, credentials):
    method, path = ROUTES[route]
    headers, status, code = CREDENTIALS[credentials]
    before = library_snapshot(live_styles_dir)
    body = {
        "POST": {"files": {"manifest": ("style.yaml", manifest_yaml("sneaky")), "lora": ("lora.safetensors", lora)}},
        "PATCH": {"json": {"default_version": 1}},
    }.get(method, {})
    response = httpx.request(method, f"{serve_url}{path}", headers=headers, timeout=ADMIN_TIMEOUT, **body)
    assert_json_error(response, status, code)
    assert library_snapshot(live_styles_dir) == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}], ids=["no token", "wrong token"])
def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(serve_url, headers):
    """It promises 1 GB and sends 1 KB: only an answer from the headers alone comes back (else: a 60 s timeout)."""
    answer = post_declaring(serve_url, "/admin/styles", 10**9, bytes(1024), "multipart/form-data; boundary=b", **headers)
    assert (answer.status, answer.is_json) == ((401, True) if not headers else (403, True))


HOSTILE_PATH_IDS = {
    "..%2F..": (404, "http_404"),
    "..%2F..%2Fetc%2Fpasswd": (404, "http_404"),
    "film-noir%2F.": (404, "http_404"),
    "film-noir%2F..": (404, "http_404"),
    "%2E%2E": (422, "invalid_parameter"),
    "%2E": (422, "invalid_parameter"),
    ".hidden": (422, "invalid_parameter"),
    "Film-Noir": (422, "invalid_parameter"),
    "film-noir%00": (422, "invalid_parameter"),
    "%00": (422, "invalid_parameter"),
    "film-noir%0A": (422, "invalid_parameter"),
    "film%E2%80%90noir": (422, "invalid_parameter"),
    "film-noir%5C..": (422, "invalid_parameter"),
    "film-noir@1": (422, "invalid_parameter"),
    "no-such-style": (404, "unknown_style"),
}


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("style_id", HOSTILE_PATH_IDS)
def test_hostile_style_id_path_parameters(serve_url, live_styles_dir, method, style_id):
    status, code = HOSTILE_PATH_IDS[style_id]
    before = library_snapshot(live_styles_dir)
    body = {"json": {"default_version": 1}} if method == "PATCH" else {}
    response = httpx.request(
        method, f"{serve_url}/admin/styles/{style_id}", headers=AUTH, timeout=ADMIN_TIMEOUT, **body
    )
    assert_json_error(response, status, code)
    assert library_snapshot(live_styles_dir) == before


HOSTILE_STYLES = {
    "../styles/film-noir": (422, "invalid_parameter"),
    "film-noir/.": (422, "invalid_parameter"),
    "film-noir/..": (422, "invalid_parameter"),
    "film-noir@../1": (422, "invalid_parameter"),
    "film-noir@1/..": (422, "invalid_parameter"),
    "/etc/passwd": (422, "invalid_parameter"),
    "\x00": (422, "invalid_parameter"),
    "%00": (422, "invalid_parameter"),
    "film-noir\n": (422, "invalid_parameter"),
    "Film-Noir": (422, "invalid_parameter"),
    "film\u2010noir": (422, "invalid_parameter"),
    "film-noir@01": (422, "invalid_parameter"),
    "film-noir@\u00b2": (422, "invalid_parameter"),
    "film-noir@latest": (422, "invalid_parameter"),
    "": (422, "invalid_parameter"),
    "no-such-style": (404, "unknown_style"),
    "film-noir@7": (404, "unknown_style"),
}


@pytest.mark.parametrize("style", HOSTILE_STYLES, ids=[ascii(style) for style in HOSTILE_STYLES])
def test_hostile_style_names_on_the_public_api(serve_url, live_styles_dir, sample_face, style):
    status, code = HOSTILE_STYLES[style]
    before = library_snapshot(live_styles_dir)
    assert_json_error(portrait(serve_url, sample_face, style), status, code)
    as_json = {"style": style, "image_base64": base64.b64encode(sample_face).decode(), **FAST}
    assert_json_error(httpx.post(f"{serve_url}/v1/portraits", json=as_json, timeout=PORTRAIT_TIMEOUT), status, code)
    assert library_snapshot(live_styles_dir) == before


# Publishes a new version of argv[2] on the library at argv[1] and dies (SIGKILL) half-way through writing its
# manifest: the version is claimed and its LoRA written, nothing is committed.
KILLED_PUBLISH = """
import os, signal, sys
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import StyleManifest

catalog = StyleCatalog(sys.argv[1])
pipe_file = catalog.store.fs.pipe_file

def pipe_file_then_die(path, data, **kwargs):
    if path.endswith(".tmp"):
        pipe_file(path, data[: len(data) // 2], **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return pipe_file(path, data, **kwargs)

catalog.store.fs.pipe_file = pipe_file_then_die
manifest = StyleManifest(id=sys.argv[2], title="Killed", prompt_template="{subject}, killed mid-publish")
catalog.publish(manifest, open(sys.argv[3], "rb").read())
"""


@pytest.mark.parametrize("style_id, claimed", [("film-noir", 2), ("brand-new", 1)])
def test_a_publisher_killed_mid_publish_leaves_no_partial_version(tmp_path, styles_dir, lora, style_id, claimed):
    library = tmp_path / "styles"
    shutil.copytree(styles_dir, library)
    (tmp_path / "lora.safetensors").write_bytes(lora)
    before_files, before = library_snapshot(library), StyleCatalog(library)
    before_statuses = before.statuses()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_PUBLISH, str(library), style_id, str(tmp_path / "lora.safetensors")],
        cwd=REPO, capture_output=True, timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    partial = sorted(path.name for path in (library / style_id / str(claimed)).iterdir())
    assert ".claim" in partial and "lora.safetensors" in partial and "style.yaml" not in partial
    assert {k: v for k, v in library_snapshot(library).items() if k in before_files} == before_files

    restarted = StyleCatalog(library)
    assert restarted.statuses() == before_statuses
    for style in restarted.ids():
        for version, found in restarted.versions(style).items():
            original = before.version(f"{style}@{version}")
            assert found.manifest == original.manifest and found.read_lora() == original.read_lora()
    published = restarted.publish(StyleManifest(id=style_id, title="After", prompt_template="{subject}, after"), lora)
    assert published.manifest.version == claimed + 1  # the dead publisher's claim keeps its number
    assert restarted.get(style_id).versioned_id == published.versioned_id
    assert sorted(restarted.versions(style_id)) == [*range(1, claimed), claimed + 1]


def test_concurrent_publishes_while_portraits_flow(serve_url, live_styles_dir, sample_face, lora):
    with ThreadPoolExecutor(6) as pool:
        portraits = [pool.submit(portrait, serve_url, sample_face, "film-noir") for _ in range(2)]
        publishes = [
            pool.submit(
                publish, serve_url, manifest_yaml("rush-hour", description=f"take {i}"), lora, timeout=ADMIN_TIMEOUT
            )
            for i in range(4)
        ]
        published = [future.result() for future in publishes]
        generated = [future.result() for future in portraits]
    assert [response.status_code for response in published] == [201] * 4, [r.text[:200] for r in published]
    assert sorted(response.json()["version"] for response in published) == [1, 2, 3, 4]
    assert [response.status_code for response in generated] == [200, 200], [r.text[:200] for r in generated]
    listed = {style["id"]: style for style in httpx.get(f"{serve_url}/admin/styles", headers=AUTH).json()}
    assert listed["rush-hour"]["versions"] == [1, 2, 3, 4]
    stored = {(live_styles_dir / "rush-hour" / str(v) / "style.yaml").read_text() for v in range(1, 5)}
    assert {yaml.safe_load(text)["description"] for text in stored} == {f"take {i}" for i in range(4)}
