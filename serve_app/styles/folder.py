"""One style folder on a filesystem (local or remote): its manifest, the LoRA it names and its preview image."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from serve_app.pipeline.errors import NoPreviewError
from serve_app.styles.manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    MAX_PREVIEW_BYTES,
    MAX_PREVIEW_PIXELS,
    PREVIEW_FORMATS,
    PREVIEW_MEDIA_TYPES,
    StyleFolderError,
    StyleManifest,
    parse_manifest,
)


@dataclass(frozen=True)
class Style:
    """One version of a style: its manifest and where its LoRA file is (on ``fs``, local or remote)."""

    manifest: StyleManifest
    fs: AbstractFileSystem
    lora_url: str

    @property
    def versioned_id(self) -> str:
        return self.manifest.versioned_id

    def read_lora(self) -> bytes:
        return self.fs.cat_file(self.lora_url)

    def read_preview(self) -> tuple[bytes, str]:
        """The preview image and its media type."""
        name = self.manifest.preview
        if name is None:
            raise NoPreviewError(f"style {self.versioned_id} has no preview image")
        folder = self.lora_url.rsplit("/", 1)[0]
        return self.fs.cat_file(f"{folder}/{name}"), PREVIEW_MEDIA_TYPES[Path(name).suffix.lower()]


def read_style(fs: AbstractFileSystem, folder: str, require_lora: bool = True) -> Style:
    """Read and validate one style folder (``style.yaml`` and the LoRA it names) on ``fs``."""
    manifest_url = f"{folder}/{MANIFEST_FILE}"
    if not fs.isfile(manifest_url):
        raise StyleFolderError(f"{folder}: no {MANIFEST_FILE}")
    with fs.open(manifest_url, "rb") as file:
        manifest = parse_manifest(file.read(MAX_MANIFEST_BYTES + 1), manifest_url)
    lora_url = f"{folder}/{manifest.lora.file}"
    if require_lora and not fs.isfile(lora_url):
        raise StyleFolderError(f"{folder}: LoRA file {manifest.lora.file!r} is missing")
    if manifest.preview is not None and not fs.isfile(f"{folder}/{manifest.preview}"):
        raise StyleFolderError(f"{folder}: preview image {manifest.preview!r} is missing")
    return Style(manifest=manifest, fs=fs, lora_url=lora_url)


@dataclass(frozen=True)
class PreviewImage:
    """A style's preview image, read whole and found to be a PNG, JPEG or WebP within the limits (made by
    ``checked_preview``), and the suffix of its stored file."""

    data: bytes
    suffix: str


def checked_preview(data: bytes) -> PreviewImage:
    """The preview image in ``data``; StyleFolderError unless it is a PNG, JPEG or WebP within the limits."""
    if len(data) > MAX_PREVIEW_BYTES:
        raise StyleFolderError(f"the preview is over the limit of {MAX_PREVIEW_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            if image_format not in PREVIEW_FORMATS:
                raise StyleFolderError(f"the preview must be PNG, JPEG or WebP, not {image_format}")
            if image.width * image.height > MAX_PREVIEW_PIXELS:
                raise StyleFolderError(f"the preview has over {MAX_PREVIEW_PIXELS} pixels")
            image.load()
    except StyleFolderError:
        raise
    except Exception:  # whatever Pillow raises on a crafted or truncated file
        raise StyleFolderError("the preview is not a readable image") from None
    return PreviewImage(data, PREVIEW_FORMATS[image_format])


def load_style_folder(folder: Path) -> Style:
    """A local style folder, as a curator prepares it."""
    return read_style(LocalFileSystem(), str(Path(folder).resolve()))
