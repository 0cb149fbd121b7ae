"""Decoding and validating user images, and small image helpers shared by the stages."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from serve_app.pipeline.errors import (
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidImageError,
    UnsupportedImageFormatError,
)

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF"})


@dataclass(frozen=True)
class ImageLimits:
    """What the service accepts as a reference image."""

    max_bytes: int = 15 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 8192
    min_side: int = 64


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Decode image bytes into an upright RGB ``uint8`` array of shape (H, W, 3).

    Checks byte size, format and pixel count *before* decoding pixels (a decompression bomb never expands),
    applies the EXIF orientation, and flattens every colour mode (greyscale, palette, alpha, CMYK, 16-bit) to RGB.
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    if not data:
        raise InvalidImageError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLargeError(f"image has too many pixels: {exc}") from None
    except Exception:  # on crafted files Pillow raises OSError, ValueError, struct.error, EOFError, IndexError…
        raise InvalidImageError("the data is not a decodable image") from None
    if image.format not in ACCEPTED_FORMATS:
        raise UnsupportedImageFormatError(
            f"image format {image.format!r} is not accepted; use one of {', '.join(sorted(ACCEPTED_FORMATS))}"
        )
    width, height = image.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise ImageTooLargeError(
            f"image is {width}x{height}; the limits are {limits.max_side} px a side and {limits.max_pixels} pixels"
        )
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(f"image is {width}x{height}; each side must be at least {limits.min_side} px")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return np.asarray(to_rgb(image))
    except Exception as exc:  # as above, for the pixel data, the EXIF block and the mode conversion
        raise InvalidImageError(f"the image is truncated or corrupt: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def resize_max_side(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longer side is at most ``max_side``; returns the image and the scale applied."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale == 1.0:
        return image, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)), scale
