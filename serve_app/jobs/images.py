"""A job's reference images as the job stores keep them: one blob. One image is kept as its own bytes (as every
job was before group portraits); several are packed behind a header naming their lengths."""

from __future__ import annotations

import json
from collections.abc import Sequence

from serve_app.pipeline.errors import InvalidImageError
from serve_app.pipeline.request import MAX_PEOPLE

GROUP_MAGIC = b"PSGROUP1\n"  # no image format starts so (PNG, JPEG, WebP, BMP and TIFF have their own magic)


def pack_images(images: Sequence[bytes]) -> bytes:
    if len(images) == 1:
        return images[0]
    header = json.dumps([len(image) for image in images]).encode("ascii")
    return b"".join([GROUP_MAGIC, header, b"\n", *images])


def unpack_images(blob: bytes) -> tuple[bytes, ...]:
    """The images ``pack_images`` packed; a blob that only looks packed is refused as an invalid image."""
    if not blob.startswith(GROUP_MAGIC):
        return (blob,)
    header, _, rest = blob[len(GROUP_MAGIC):].partition(b"\n")
    try:
        lengths = json.loads(header)
        valid = (
            isinstance(lengths, list) and 1 < len(lengths) <= MAX_PEOPLE
            and all(isinstance(n, int) and n >= 0 for n in lengths) and sum(lengths) == len(rest)
        )
    except ValueError:
        valid = False
    if not valid:
        raise InvalidImageError("the image is not in a known format")
    offsets = [sum(lengths[:i]) for i in range(len(lengths) + 1)]
    return tuple(rest[start:stop] for start, stop in zip(offsets, offsets[1:]))
