"""The studio and curator pages, their assets, and the inspection API through the ingress's own FastAPI app over
stand-in stages (no Ray): strict page headers and nothing inline or from elsewhere; JSON errors that name the
fields at fault; style previews (listing, media types, caching, refusals); preview uploads checked before the
library changes; and the units underneath (catalogue, ``read_style``, error bodies, ``field_errors``)."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import ADMIN_TOKEN, png_bytes
from curation import AUTH, manifest_yaml
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from test_ingress_timeout import StandInStage

from serve_app.api import pages
from serve_app.api.errors import field_errors, invalid_parameters
from serve_app.ingress import PortraitIngress
from serve_app.pipeline.errors import NoFaceError, PortraitError, UnknownStyleError
from serve_app.pipeline.lora_validation import LoraSummary
from serve_app.sample import sample_face
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import checked_preview, read_style
from serve_app.styles.manifest import StyleFolderError, parse_manifest

MIB = 1024 * 1024


class LayoutStandIn(StandInStage):
    """The layout generator's stand-in, whose LoRA dry-run accepts any upload (what is tested here is checked
    before it); its generation calls never answer, like every stand-in stage's."""

    class validate_lora:  # noqa: N801 - stands in for a handle's method
        @staticmethod
        async def remote(data: bytes) -> LoraSummary:
            return LoraSummary(tensors=2, rank=4, targets=frozenset({"unet"}))


JOBS = tempfile.TemporaryDirectory(prefix="jobs")


class Ingress:
    """The ingress's app over stand-in stages, each request run to its answer (a stage call ends as a 408)."""

    def __init__(self, styles: Path | str, **args) -> None:
        stages = [StandInStage(), LayoutStandIn(), *(StandInStage() for _ in range(3))]
        jobs_store = f"sqlite:///{JOBS.name}/jobs.sqlite3"
        settings = PortraitAppArgs(styles_dir=str(styles), request_timeout_s=0.2, jobs_store=jobs_store, **args)
        ingress = PortraitIngress(*stages, settings)
        self.catalog = ingress.services.catalog
        self.app = ingress.__serve_build_asgi_app__()

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        async def answer() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(answer())

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture(scope="module")
def shipped(styles_dir) -> Ingress:
    """Over the shipped styles (read-only), with a non-default image limit."""
    return Ingress(styles_dir, max_image_bytes=3 * MIB)


@pytest.fixture
def library(styles_dir, tmp_path) -> Path:
    """A copy of the shipped styles that a test may change."""
    return Path(shutil.copytree(styles_dir, tmp_path / "styles"))


@pytest.fixture
def curator(library, monkeypatch) -> Ingress:
    monkeypatch.setenv("STUDIO_ADMIN_TOKEN", ADMIN_TOKEN)
    return Ingress(library)


def refusal(response: httpx.Response) -> tuple[int, str, list[str]]:
    """Status, error code and the fields an error body names."""
    error = response.json()["error"]
    return response.status_code, error["code"], [field["field"] for field in error.get("fields", [])]


def image_bytes(image_format: str, seed: int = 0, **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    if image_format == "PNG":
        return png_bytes(pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def files_in(tree: Path) -> list[tuple[str, bytes]]:
    return sorted((str(path.relative_to(tree)), path.read_bytes()) for path in tree.rglob("*") if path.is_file())


# -- pages and assets --------------------------------------------------------------------------------------------

class Page(HTMLParser):
    """Every element of a page with its attributes, and the text of its inline scripts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.script_text: list[str] = []
        self._in_script = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, attrs))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.script_text.append(data)

    def urls(self) -> list[str]:
        return [value or "" for _, attrs in self.elements for name, value in attrs if name in ("src", "href")]


@pytest.mark.parametrize("path", ["/", "/curator"])
def test_a_page_has_the_strict_headers_and_the_api_limits_filled_in(shipped, path):
    response = shipped.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"
    assert "{{" not in response.text
    if path == "/":
        body = next(dict(attrs) for tag, attrs in Page(response.text).elements if tag == "body")
        assert int(body["data-max-image-bytes"]) == 3 * MIB


@pytest.mark.parametrize("path", ["/", "/curator"])
def test_a_page_loads_nothing_inline_or_from_elsewhere_and_every_asset_it_names_is_served(shipped, path):
    page = Page(shipped.get(path).text)
    tags = [tag for tag, _ in page.elements]
    scripts = [dict(attrs) for tag, attrs in page.elements if tag == "script"]
    assert scripts and all(script.get("src", "").startswith("/static/") for script in scripts)
    assert page.script_text == [] and "style" not in tags
    attributes = [name for _, attrs in page.elements for name, _ in attrs]
    assert [name for name in attributes if name == "style" or name.startswith("on")] == []
    assert [url for url in page.urls() if re.match(r"(https?:)?//", url, re.IGNORECASE)] == []
    assets = [url for url in page.urls() if url.startswith("/static/")]
    assert assets
    while assets:  # the page's assets, and the modules its scripts import
        url = assets.pop()
        response = shipped.get(url)
        assert response.status_code == 200, url
        if url.endswith(".js"):
            assets += [f"/static/{name}" for name in re.findall(r'from\s+"\./([^"]+)"', response.text)]


@pytest.mark.parametrize(("asset", "media_type"), [
    ("studio.js", "text/javascript"), ("curator.js", "text/javascript"), ("common.js", "text/javascript"),
    ("style.css", "text/css"),
])
def test_an_asset_has_its_content_type_the_page_headers_and_revalidates_to_304(shipped, asset, media_type):
    response = shipped.get(f"/static/{asset}")
    assert response.status_code == 200 and response.headers["content-type"].split(";")[0] == media_type
    assert response.headers["content-security-policy"] == pages.CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-cache"
    revalidated = shipped.get(f"/static/{asset}", headers={"If-None-Match": response.headers["etag"]})
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert shipped.get(f"/static/{asset}", headers={"If-None-Match": '"stale"'}).status_code == 200


@pytest.mark.parametrize("path", [
    "/static/missing.js", "/static/studio.html", "/static/curator.html", "/static/%2e%2e/pages/studio.html",
])
def test_what_is_not_an_asset_is_a_json_404(shipped, path):
    response = shipped.get(path)
    assert response.status_code == 404 and response.json()["error"]["code"] == "http_404"


def test_the_sample_face_is_served_as_png(shipped):
    response = shipped.get("/sample_face.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == sample_face()


# -- field errors of POST /v1/portraits ----------------------------------------------------------------------------

def post_portrait(ingress: Ingress, fields: dict) -> httpx.Response:
    """A multipart request (always multipart, whatever its fields) for film-noir with some image bytes."""
    fields = {"image": b"png", "style": "film-noir", **fields}
    image = fields.pop("image")
    parts = [("image", ("face.png", image))] if image is not None else []
    return ingress.post("/v1/portraits", files=parts + [(name, (None, value)) for name, value in fields.items()])


@pytest.mark.parametrize(("fields", "status", "code", "named"), [
    ({"num_candidates": "2", "top_k": "3"}, 422, "invalid_parameter", ["top_k"]),
    ({"t1": "0"}, 422, "invalid_parameter", ["t1"]),
    ({"t1": "1"}, 422, "invalid_parameter", ["t1"]),
    ({"t1": "1.5"}, 422, "invalid_parameter", ["t1"]),
    ({"t1": "-0.1"}, 422, "invalid_parameter", ["t1"]),
    ({"upscale": "3"}, 422, "invalid_parameter", ["upscale"]),
    ({"style": "no-such-style"}, 404, "unknown_style", ["style"]),
    ({"image": None}, 422, "invalid_parameter", ["image"]),
    ({"colour": "red"}, 422, "invalid_parameter", ["colour"]),
    ({"t1": "0.5", "num_candidates": "2", "top_k": "2", "upscale": "4"}, 408, "timeout", []),  # valid: to the stages
], ids=["top_k>N", "t1=0", "t1=1", "t1=1.5", "t1<0", "upscale=3", "unknown-style", "no-image", "unknown-field",
        "valid"])
def test_a_refused_portrait_request_names_the_field_at_fault(shipped, fields, status, code, named):
    assert refusal(post_portrait(shipped, fields)) == (status, code, named)


def test_an_unknown_field_named_like_a_request_part_is_named_itself(shipped):
    assert refusal(post_portrait(shipped, {"query": "1"})) == (422, "invalid_parameter", ["query"])


@pytest.mark.parametrize(("t1", "status", "code", "named"), [
    (2, 422, "invalid_parameter", ["t1"]), (0.5, 408, "timeout", []),
])
def test_a_json_request_names_t1_out_of_range(shipped, t1, status, code, named):
    body = {"style": "film-noir", "image_base64": base64.b64encode(b"png").decode(), "t1": t1}
    assert refusal(shipped.post("/v1/portraits", json=body)) == (status, code, named)


# -- style previews ------------------------------------------------------------------------------------------------

def test_the_shipped_styles_have_no_preview(shipped):
    listing = shipped.get("/v1/styles").json()
    assert len(listing) == 3 and [style["preview_url"] for style in listing] == [None] * 3
    for ref in ("film-noir", "film-noir@1"):
        assert refusal(shipped.get(f"/v1/styles/{ref}/preview")) == (404, "no_preview", [])


def test_a_published_preview_is_listed_and_served_cached_for_good_only_by_version(library):
    preview = image_bytes("PNG")
    StyleCatalog(library).publish(parse_manifest(manifest_yaml("film-noir"), "m"), b"lora", checked_preview(preview))
    ingress = Ingress(library)
    urls = {style["id"]: style["preview_url"] for style in ingress.get("/v1/styles").json()}
    assert urls == {"film-noir": "/v1/styles/film-noir@2/preview", "summer-beach": None, "xmas-sweater": None}
    pinned, default = ingress.get(urls["film-noir"]), ingress.get("/v1/styles/film-noir/preview")
    assert (pinned.status_code, pinned.content, pinned.headers["content-type"]) == (200, preview, "image/png")
    assert "immutable" in pinned.headers["cache-control"]
    assert (default.status_code, default.content, default.headers["cache-control"]) == (200, preview, "no-cache")
    assert refusal(ingress.get("/v1/styles/film-noir@1/preview")) == (404, "no_preview", [])  # v1 has none


@pytest.mark.parametrize(("image_format", "media_type"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_a_preview_is_served_with_its_image_type(library, image_format, media_type):
    preview = image_bytes(image_format)
    StyleCatalog(library).publish(parse_manifest(manifest_yaml(), "m"), b"lora", checked_preview(preview))
    response = Ingress(library).get("/v1/styles/snow-globe@1/preview")
    assert (response.status_code, response.content, response.headers["content-type"]) == (200, preview, media_type)


def test_the_preview_of_an_unknown_or_retired_style_is_refused(library):
    catalog = StyleCatalog(library)
    catalog.publish(parse_manifest(manifest_yaml(), "m"), b"lora", checked_preview(image_bytes("PNG")))
    ingress = Ingress(library)
    assert ingress.get("/v1/styles/snow-globe/preview").status_code == 200
    assert refusal(ingress.get("/v1/styles/no-such-style/preview")) == (404, "unknown_style", ["style"])
    assert refusal(ingress.get("/v1/styles/snow-globe@2/preview")) == (404, "unknown_style", ["style"])
    catalog.update_state("snow-globe", retired=True)
    ingress.catalog.view.refresh()  # what its refresher does within styles_refresh_s
    for ref in ("snow-globe", "snow-globe@1"):
        assert refusal(ingress.get(f"/v1/styles/{ref}/preview")) == (410, "style_retired", ["style"])


# -- publishing through the admin route ----------------------------------------------------------------------------

def publish(ingress: Ingress, manifest: bytes, preview: bytes | None = None, lora_name: str = "lora.safetensors"):
    files = {"manifest": ("style.yaml", manifest), "lora": (lora_name, b"lora")}
    if preview is not None:
        files["preview"] = ("preview.img", preview)
    return ingress.post("/admin/styles", files=files, headers=AUTH)


UNTITLED = yaml.safe_dump({"id": "snow-globe", "prompt_template": "portrait of {subject}"}).encode()


@pytest.mark.parametrize(("manifest", "preview", "lora_name", "field", "says"), [
    (UNTITLED, None, "lora.safetensors", "manifest.title", "required"),
    (manifest_yaml(defaults={"t1": 1.5}), None, "lora.safetensors", "manifest.defaults.t1", "less than 1"),
    (manifest_yaml(preview="x.gif"), None, "lora.safetensors", "manifest.preview", ".png"),
    (b"{[", None, "lora.safetensors", "manifest", "while parsing"),
    (b"- a list\n", None, "lora.safetensors", "manifest", "not a YAML mapping"),
    (manifest_yaml(), b"not an image", "lora.safetensors", "preview", "not a readable image"),
    (manifest_yaml(), image_bytes("GIF"), "lora.safetensors", "preview", "PNG, JPEG or WebP"),
    (manifest_yaml(preview="preview.png"), None, "lora.safetensors", "preview", "preview.png"),
    (manifest_yaml(), image_bytes("PNG"), "lora.bin", "lora", ".safetensors"),
], ids=["no-title", "defaults.t1", "gif-name", "not-yaml", "a-list", "not-an-image", "gif", "preview-missing",
        "lora.bin"])
def test_a_refused_upload_names_its_field_and_leaves_the_library_unchanged(
    curator, library, manifest, preview, lora_name, field, says
):
    before = files_in(library)
    response = publish(curator, manifest, preview, lora_name)
    assert refusal(response) == (422, "invalid_style", [field])
    assert says in response.json()["error"]["fields"][0]["message"]
    assert files_in(library) == before


def test_an_upload_that_passes_the_checks_is_published_with_its_preview(curator, library):
    preview = image_bytes("PNG")
    response = publish(curator, manifest_yaml(preview="cover.png"), preview)
    assert response.status_code == 201 and response.json()["versioned_id"] == "snow-globe@1"
    assert (library / "snow-globe" / "1" / "preview.png").read_bytes() == preview
    assert curator.get("/v1/styles/snow-globe@1/preview").content == preview


def test_a_multi_picture_jpeg_preview_is_published_as_a_jpeg(curator):
    preview = image_bytes("MPO", save_all=True, append_images=[Image.new("RGB", (16, 16))])
    assert preview.startswith(b"\xff\xd8")  # a JPEG file
    assert publish(curator, manifest_yaml(), preview).status_code == 201
    assert curator.get("/v1/styles/snow-globe/preview").headers["content-type"] == "image/jpeg"


# -- catalogue and read_style --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("image_format", "stored"), [("PNG", "preview.png"), ("JPEG", "preview.jpg"),
                                                      ("WEBP", "preview.webp")])
def test_publishing_stores_the_preview_under_its_format_and_the_manifest_names_it(library, image_format, stored):
    preview = image_bytes(image_format)
    style = StyleCatalog(library).publish(
        parse_manifest(manifest_yaml(preview="cover.png"), "m"), b"lora", checked_preview(preview)
    )
    folder = library / "snow-globe" / "1"
    assert style.manifest.preview == stored and (folder / stored).read_bytes() == preview
    assert yaml.safe_load((folder / "style.yaml").read_text())["preview"] == stored
    assert StyleCatalog(library).get("snow-globe").read_preview()[0] == preview


def test_read_style_refuses_a_manifest_naming_a_missing_preview(library):
    folder = library / "film-noir"
    (folder / "style.yaml").write_text((folder / "style.yaml").read_text() + "preview: cover.webp\n")
    with pytest.raises(StyleFolderError, match="cover.webp"):
        read_style(LocalFileSystem(), str(folder))
    (folder / "cover.webp").write_bytes(image_bytes("WEBP"))
    assert read_style(LocalFileSystem(), str(folder)).read_preview() == (image_bytes("WEBP"), "image/webp")


@pytest.mark.parametrize(("name", "valid"), [("x.gif", False), ("x.svg", False), ("x.png", True), ("x.JPEG", True),
                                             ("x.webp", True)])
def test_a_manifest_preview_is_a_png_jpeg_or_webp_file_name(name, valid):
    manifest = manifest_yaml(preview=name)
    if valid:
        assert parse_manifest(manifest, "m").preview == name
    else:
        with pytest.raises(StyleFolderError, match="preview"):
            parse_manifest(manifest, "m")


# -- error bodies --------------------------------------------------------------------------------------------------

def test_an_error_body_lists_its_fields_only_when_it_has_some():
    assert PortraitError("m").to_dict() == {"error": {"code": "bad_request", "message": "m"}}
    assert NoFaceError("m").to_dict()["error"]["fields"] == [{"field": "image", "message": "m"}]
    assert UnknownStyleError("m").to_dict()["error"]["fields"] == [{"field": "style", "message": "m"}]
    assert PortraitError("m", {"a": "x", "b": "y"}).to_dict()["error"]["fields"] == [
        {"field": "a", "message": "x"}, {"field": "b", "message": "y"}]


@pytest.mark.parametrize(("loc", "within", "expected"), [
    (("defaults", "t1"), "manifest", {"manifest.defaults.t1": "bad"}),
    (("tags", 0), "manifest", {"manifest.tags.0": "bad"}),
    ((), "manifest", {"manifest": "bad"}),
    (("top_k",), "body", {"top_k": "bad"}),
    (("query",), "body", {"query": "bad"}),
    ((), "body", {"body": "bad"}),
])
def test_field_errors_name_dotted_paths_inside_their_document(loc, within, expected):
    assert field_errors([{"loc": loc, "msg": "Value error, bad"}], within) == expected


def test_invalid_parameters_is_a_422_naming_each_field():
    error = invalid_parameters([{"loc": ("t1",), "msg": "too big"}, {"loc": ("seed",), "msg": "< 0"}])
    assert (error.http_status, error.code) == (422, "invalid_parameter")
    assert error.to_dict()["error"]["fields"] == [{"field": "t1", "message": "too big"},
                                                  {"field": "seed", "message": "< 0"}]


def test_a_route_parameter_error_names_the_field_without_fastapis_request_part(curator):
    response = curator.request(
        "PATCH", "/admin/styles/film-noir", json={"available_from": "soon", "retired": True}, headers=AUTH
    )
    assert refusal(response) == (422, "invalid_parameter", ["available_from", "retired"])


def test_the_api_docs_load_their_scripts_from_the_service_not_a_cdn(shipped):
    """Swagger UI works where the browser cannot reach the internet (ReDoc's page is not offered: it fetches its
    logo from redoc.ly)."""
    assert shipped.get("/redoc").status_code == 404
    response = shipped.get("/docs")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = Page(response.text)
    scripts = [dict(attrs)["src"] for tag, attrs in page.elements if tag == "script" and dict(attrs).get("src")]
    assert scripts and [url for url in page.urls() if re.match(r"(https?:)?//", url, re.IGNORECASE)] == []
    assert "/openapi.json" in response.text
    for url in page.urls():
        asset = shipped.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
