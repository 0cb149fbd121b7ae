"""One style folder on a filesystem (local or remote): its manifest, the LoRA it names and its preview image."""

from __future__ import annotations

import io
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from serve_app.pipeline.errors import NoPreviewError, StyleStoreUnavailableError
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


def _unreachable(error: Exception) -> bool:
    """Whether ``error`` says the storage could not be reached (not that a file is missing or exists)."""
    if isinstance(error, (FileNotFoundError, FileExistsError)):
        return False
    botocore = sys.modules.get("botocore.exceptions")  # s3fs's own connection errors are not OSErrors
    return isinstance(error, OSError) or (botocore is not None and isinstance(error, botocore.BotoCoreError))


@contextmanager
def store_errors(action: str) -> Iterator[None]:
    """Storage that cannot be reached during ``action`` raises StyleStoreUnavailableError (a JSON 503)."""
    try:
        yield
    except Exception as error:
        if not _unreachable(error):
            raise
        raise StyleStoreUnavailableError(f"the style library's storage is unreachable ({action})") from error


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
        with store_errors(f"reading the LoRA of {self.versioned_id}"):
            return self.fs.cat_file(self.lora_url)

    def read_preview(self) -> tuple[bytes, str]:
        """The preview image and its media type."""
        name = self.manifest.preview
        if name is None:
            raise NoPreviewError(f"style {self.versioned_id} has no preview image")
        folder = self.lora_url.rsplit("/", 1)[0]
        with store_errors(f"reading the preview of {self.versioned_id}"):
            return self.fs.cat_file(f"{folder}/{name}"), PREVIEW_MEDIA_TYPES[Path(name).suffix.lower()]


def read_style(
    fs: AbstractFileSystem, folder: str, require_lora: bool = True, files: Collection[str] | None = None
) -> Style:
    """Read and validate one style folder (``style.yaml`` and the LoRA it names) on ``fs``; ``files``: the paths
    a listing found there, so that no file is asked for on its own (a round trip each on an object store)."""
    exists = fs.isfile if files is None else files.__contains__
    manifest_url = f"{folder}/{MANIFEST_FILE}"
    if not exists(manifest_url):
        raise StyleFolderError(f"{folder}: no {MANIFEST_FILE}")
    manifest = parse_manifest(fs.cat_file(manifest_url, start=0, end=MAX_MANIFEST_BYTES + 1), manifest_url)
    lora_url = f"{folder}/{manifest.lora.file}"
    if require_lora and not exists(lora_url):
        raise StyleFolderError(f"{folder}: LoRA file {manifest.lora.file!r} is missing")
    if manifest.preview is not None and not exists(f"{folder}/{manifest.preview}"):
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
