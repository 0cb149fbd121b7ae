"""Odd and hostile reference images for the reliability matrix, each made from the bundled face or from nothing."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import skimage.data
from PIL import Image

from conftest import packaged_image


def encoded(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def face(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def in_mode(data: bytes, mode: str, image_format: str = "PNG") -> bytes:
    """The face converted to a Pillow colour mode (``I;16`` through 16-bit greyscale)."""
    image = face(data)
    if mode == "I;16":
        grey = np.asarray(image.convert("L"), dtype=np.uint16) * 257
        return encoded(Image.fromarray(grey).convert("I;16"), image_format)
    if mode == "PA":  # palette with a transparent index
        return encoded(image.convert("P"), image_format, transparency=0)
    return encoded(image.convert(mode), image_format)


def with_orientation(data: bytes, orientation: int) -> bytes:
    """A JPEG stored so that its EXIF orientation tag turns it back into the upright face."""
    stored = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    image = face(data).transpose(stored[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(image, "JPEG", exif=exif, quality=92)


def animated(data: bytes, image_format: str) -> bytes:
    """Two frames, the face first (services decode the first frame)."""
    first = face(data)
    second = Image.new("RGB", first.size, (0, 0, 0))
    return encoded(first, image_format, save_all=True, append_images=[second], duration=100, loop=0)


def truncated(data: bytes, image_format: str) -> bytes:
    full = encoded(face(data), image_format)
    return full[: len(full) // 2]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` over one compressed row of data (a pixel bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    pixels = zlib.compress(b"\x00" * (width // 8 + 2), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def on_canvas(data: bytes, face_side: int, canvas_side: int) -> bytes:
    """The face shrunk to ``face_side`` pixels on a plain grey canvas."""
    canvas = Image.new("RGB", (canvas_side, canvas_side), (128, 128, 128))
    canvas.paste(face(data).resize((face_side, face_side)), ((canvas_side - face_side) // 2,) * 2)
    return encoded(canvas)


def cut_by_border(data: bytes, keep: float) -> bytes:
    """Only the left ``keep`` share of the face image (the rest of the face is outside the picture)."""
    image = face(data)
    return encoded(image.crop((0, 0, round(image.width * keep), image.height)))


def in_profile(data: bytes) -> bytes:
    """The face turned on its side (90°), the pose a frontal detector does not find."""
    return encoded(face(data).rotate(90, expand=True))


def no_face() -> bytes:
    return encoded(Image.fromarray(skimage.data.chelsea()))


def several_faces() -> bytes:
    return encoded(Image.fromarray(packaged_image("t1.jpg")))


def plain(width: int, height: int, mode: str = "RGB", image_format: str = "PNG") -> bytes:
    return encoded(Image.new(mode, (width, height)), image_format)
