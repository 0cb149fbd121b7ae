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
from conftest import free_port, png_bytes
from curation import manifest_yaml
from moto.server import ThreadedMotoServer

from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import checked_preview
from serve_app.styles.manifest import parse_manifest

BUCKET = "portrait-styles"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(name, "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


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


def test_what_another_replica_published_is_seen_at_once(library: str, s3_endpoint: str, styles_dir: Path):
    catalog = StyleCatalog(library)  # lists the library: an object store's listing cache would keep what it saw
    prefix = library.removeprefix(f"s3://{BUCKET}/")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    lora = (styles_dir / "film-noir" / "lora.safetensors").read_bytes()
    for folder, manifest in (("night-train", manifest_yaml("night-train")),
                             ("film-noir/2", manifest_yaml("film-noir", version=2))):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/lora.safetensors", Body=lora)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/style.yaml", Body=manifest)
    assert "night-train@1" in [style.versioned_id for style in catalog.list()]  # a new style
    assert catalog.get("film-noir").versioned_id == "film-noir@2"  # a new version of a listed one


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
