"""What the decoder accepts, and the distinct error each bad image gets (code, HTTP status)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import png_bytes
from PIL import Image

from serve_app.pipeline.errors import (
    ImageTooLargeError,
    ImageTooSmallError,
    InvalidImageError,
    PortraitError,
    UnsupportedImageFormatError,
)
from serve_app.pipeline.images import ImageLimits, decode_image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_garbage_bytes_are_invalid_image_400():
    with pytest.raises(InvalidImageError) as error:
        decode_image(b"definitely not an image" * 10)
    assert (error.value.code, error.value.http_status) == ("invalid_image", 400)


def test_empty_and_truncated_images_are_invalid(astronaut):
    with pytest.raises(InvalidImageError):
        decode_image(b"")
    with pytest.raises(InvalidImageError):
        decode_image(encoded(Image.fromarray(astronaut), "JPEG")[:5000])


def test_unaccepted_format_is_415():
    with pytest.raises(UnsupportedImageFormatError) as error:
        decode_image(encoded(Image.new("RGB", (128, 128)), "GIF"))
    assert (error.value.code, error.value.http_status) == ("unsupported_image_format", 415)


def test_too_many_bytes_is_413():
    with pytest.raises(ImageTooLargeError) as error:
        decode_image(b"\x89PNG" + b"\0" * 2048, ImageLimits(max_bytes=1024))
    assert (error.value.code, error.value.http_status) == ("image_too_large", 413)


def test_too_many_pixels_is_413_without_decoding():
    # 9000×9000 one-bit PNG: a few kilobytes that would expand to 243 MB of RGB.
    bomb = encoded(Image.new("1", (9000, 9000)), "PNG")
    assert len(bomb) < 50_000
    with pytest.raises(ImageTooLargeError) as error:
        decode_image(bomb)
    assert "9000x9000" in error.value.message


def test_too_small_is_422():
    with pytest.raises(ImageTooSmallError) as error:
        decode_image(png_bytes(np.zeros((32, 32, 3), np.uint8)))
    assert (error.value.code, error.value.http_status) == ("image_too_small", 422)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode_image(encoded(image, "JPEG", exif=exif))
    assert decoded.shape == (200, 100, 3)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_every_colour_mode_becomes_rgb(mode):
    image = Image.new("RGB", (96, 80), (200, 120, 40)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG" if mode != "CMYK" else "TIFF"
    decoded = decode_image(encoded(image, fmt))
    assert decoded.shape == (80, 96, 3) and decoded.dtype == np.uint8


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    assert (decode_image(encoded(image, "PNG")) == 255).all()


def test_a_png_with_a_truncated_header_chunk_is_invalid_not_a_crash():
    """Pillow raises ValueError (not OSError) for it at open: found by mutating valid files."""
    short_ihdr = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x05IHDR" + bytes(5) + bytes(4)
    with pytest.raises(InvalidImageError):
        decode_image(short_ihdr)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "BMP"])
def test_mutated_files_only_ever_raise_documented_errors(astronaut, fmt):
    """Random byte changes (fixed seed, 100 per format, mostly in the headers) decode or raise a PortraitError."""
    valid = encoded(Image.fromarray(astronaut).resize((96, 96)), fmt)
    rng = np.random.default_rng(len(fmt))
    for _ in range(100):
        data = bytearray(valid)
        for _ in range(rng.integers(1, 9)):
            position = rng.integers(min(len(data), 200)) if rng.random() < 0.7 else rng.integers(len(data))
            data[position] = rng.integers(256)
        try:
            decode_image(bytes(data))
        except PortraitError:
            pass
