"""The style library on object storage: ``StyleCatalog`` over s3fs against a local S3 (moto's server on
127.0.0.1), as a cluster runs it (``styles_dir: s3://…``): reading the shipped styles, publishing with a preview,
state changes, versions another replica wrote, and concurrent publishes of one style."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import fsspec
import numpy as np
import pytest
from conftest import png_bytes
from curation import manifest_yaml
from s3_server import s3_server

from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import checked_preview
from serve_app.styles.manifest import parse_manifest

BUCKET = "portrait-styles"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with s3_server(BUCKET) as server:
        yield server.endpoint


@pytest.fixture
def library(s3_endpoint: str, styles_dir: Path, request) -> str:
    """A fresh copy of the shipped styles on S3, one prefix per test."""
    url = f"s3://{BUCKET}/{request.node.name}"
    fs, _ = fsspec.core.url_to_fs(url)
    fs.put(str(styles_dir), url, recursive=True)
    return url


def test_the_shipped_styles_read_from_s3_as_from_disk(library: str, styles_dir: Path):
    catalog = StyleCatalog(library)
    assert [style.versioned_id for style in catalog.list()] == ["film-noir@1", "summer-beach@1", "xmas-sweater@1"]
    assert catalog.get("film-noir").read_lora() == (styles_dir / "film-noir" / "lora.safetensors").read_bytes()


def test_what_another_replica_published_is_seen_at_its_next_refresh(library: str, styles_dir: Path):
    catalog, other = StyleCatalog(library), StyleCatalog(library)
    lora = (styles_dir / "film-noir" / "lora.safetensors").read_bytes()
    other.publish(parse_manifest(manifest_yaml("night-train"), "m"), lora)  # a new style
    other.publish(parse_manifest(manifest_yaml("film-noir"), "m"), lora)  # a new version of a listed one
    other.update_state("xmas-sweater", retired=True)
    assert catalog.get("film-noir").versioned_id == "film-noir@1"  # requests read the view: no storage
    catalog.view.refresh()  # one listing of the change markers, then the three styles that changed
    assert "night-train@1" in [style.versioned_id for style in catalog.list()]
    assert catalog.get("film-noir").versioned_id == "film-noir@2"
    assert catalog.status("xmas-sweater").status == "retired"


def test_a_folder_copied_in_without_the_catalogue_is_seen_at_the_rescan(library: str, s3_endpoint: str, styles_dir: Path):
    catalog = StyleCatalog(library)
    prefix = library.removeprefix(f"s3://{BUCKET}/")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    lora = (styles_dir / "film-noir" / "lora.safetensors").read_bytes()
    for folder, manifest in (("night-train", manifest_yaml("night-train")),
                             ("film-noir/2", manifest_yaml("film-noir", version=2))):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/lora.safetensors", Body=lora)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/style.yaml", Body=manifest)
    catalog.view.refresh()
    assert "night-train" not in catalog.ids()  # no change marker was written
    catalog.view.rescan()
    assert "night-train@1" in [style.versioned_id for style in catalog.list()]
    assert catalog.get("film-noir").versioned_id == "film-noir@2"


def test_publishing_on_s3_stores_the_lora_and_preview_and_state_changes_apply(library: str):
    catalog = StyleCatalog(library)
    preview = png_bytes(np.zeros((32, 32, 3), np.uint8))
    style = catalog.publish(parse_manifest(manifest_yaml("snow-globe"), "m"), b"lora bytes", checked_preview(preview))
    assert style.versioned_id == "snow-globe@1"
    again = StyleCatalog(library).get("snow-globe")
    assert again.read_lora() == b"lora bytes" and again.read_preview() == (preview, "image/png")
    catalog.update_state("snow-globe", retired=True)
    assert StyleCatalog(library).status("snow-globe").status == "retired"


def test_concurrent_publishes_on_s3_get_distinct_versions(library: str):
    manifest = parse_manifest(manifest_yaml("rush-hour"), "m")
    with ThreadPoolExecutor(6) as pool:
        published = list(pool.map(lambda n: StyleCatalog(library).publish(manifest, f"lora {n}".encode()), range(6)))
    assert sorted(style.manifest.version for style in published) == [1, 2, 3, 4, 5, 6]
    versions = StyleCatalog(library).versions("rush-hour")
    assert {version: style.read_lora() for version, style in versions.items()} == {
        style.manifest.version: style.read_lora() for style in published
    }
