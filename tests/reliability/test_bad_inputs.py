"""The matrix: bad and odd requests through real HTTP, each with the status and error code a client gets.

Every answer is JSON (an event stream's events too), nothing a client sends answers 5xx, and after the whole
matrix a good request still succeeds on the same replicas (none restarted).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable

import httpx
import pytest

import odd_images as odd
from reliability_kit import FAST, Answer, answer_of, post_declaring, post_portrait, replicas

pytestmark = pytest.mark.usefixtures("serve_url")


def image(make: Callable[[bytes], bytes], **fields: str) -> Callable[[str, bytes], Answer]:
    """A multipart request whose image is ``make(face)``."""
    return lambda url, face: post_portrait(url, make(face), {"style": "film-noir", **fields})


def fields(**overrides: str | None) -> Callable[[str, bytes], Answer]:
    """The bundled face with some fields changed (a value of None drops the field)."""
    return lambda url, face: post_portrait(url, face, {"style": "film-noir", **overrides})


def json_body(make: Callable[[bytes], object]) -> Callable[[str, bytes], Answer]:
    """A JSON request; ``make(face)`` gives the object (sent as JSON) or the raw bytes of the body."""

    def send(url: str, face: bytes) -> Answer:
        body = make(face)
        content = body if isinstance(body, bytes) else httpx.Request("POST", url, json=body).content
        headers = {"content-type": "application/json"}
        return answer_of(httpx.post(f"{url}/v1/portraits", content=content, headers=headers, timeout=120))

    return send


def raw(content: Callable[[bytes], bytes], content_type: str | None, **headers: str) -> Callable[[str, bytes], Answer]:
    def send(url: str, face: bytes) -> Answer:
        sent = dict(headers) | ({"content-type": content_type} if content_type else {})
        return answer_of(httpx.post(f"{url}/v1/portraits", content=content(face), headers=sent, timeout=120))

    return send


def declared_length(length: int) -> Callable[[str, bytes], Answer]:
    return lambda url, face: post_declaring(url, "/v1/portraits", length, face[:1024], "multipart/form-data; boundary=b")


def stream(
    make: Callable[[bytes], bytes], accept: str = "text/event-stream", **more: str
) -> Callable[[str, bytes], Answer]:
    """An event-stream request whose image is ``make(face)``."""
    return lambda url, face: post_portrait(url, make(face), {"style": "film-noir", **more}, headers={"accept": accept})


def as_b64(face: bytes) -> str:
    return base64.b64encode(face).decode()


def same(face: bytes) -> bytes:
    return face


def multipart_body(face: bytes, boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    chunks = []
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        chunks.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n")
    return b"".join(chunks) + f"--{boundary}--\r\n".encode()


BAD_UTF8_STYLE = b'{"style": "\xff", "image_base64": "AAAA"}'
OK, INVALID, TOO_LARGE = (200, None), (422, "invalid_parameter"), (413, "image_too_large")
NOT_IMAGE, SMALL, NO_FACE = (400, "invalid_image"), (422, "image_too_small"), (422, "no_face")
FORMAT, MEDIA = (415, "unsupported_image_format"), (415, "unsupported_media_type")
MALFORMED = (400, "malformed_body")

MATRIX: dict[str, tuple[Callable[[str, bytes], Answer], tuple[int, str | None]]] = {
    # -- bytes that are not an image ---------------------------------------------------------------------
    "text": (image(lambda _: b"hello, I am not an image\n" * 40), NOT_IMAGE),
    "html": (image(lambda _: b"<!doctype html><html><body><img src=x></body></html>"), NOT_IMAGE),
    "pdf": (image(lambda _: b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"), NOT_IMAGE),
    "zip": (image(lambda _: b"PK\x03\x04" + bytes(200)), NOT_IMAGE),
    "random bytes": (image(lambda _: bytes(range(256)) * 8), NOT_IMAGE),
    "empty file": (image(lambda _: b""), NOT_IMAGE),
    "png signature only": (image(lambda _: b"\x89PNG\r\n\x1a\n"), NOT_IMAGE),
    "png with a truncated header chunk": (image(lambda _: b"\x89PNG\r\n\x1a\n\x00\x00\x00\x05IHDR" + bytes(9)), NOT_IMAGE),
    "truncated png": (image(lambda f: odd.truncated(f, "PNG")), NOT_IMAGE),
    "truncated jpeg": (image(lambda f: odd.truncated(f, "JPEG")), NOT_IMAGE),
    # -- formats ---------------------------------------------------------------------------------------------
    "gif": (image(lambda f: odd.encoded(odd.face(f), "GIF")), FORMAT),
    "ico": (image(lambda f: odd.encoded(odd.face(f), "ICO")), FORMAT),
    "ppm": (image(lambda f: odd.encoded(odd.face(f), "PPM")), FORMAT),
    "webp": (image(lambda f: odd.encoded(odd.face(f), "WEBP")), OK),
    "bmp": (image(lambda f: odd.encoded(odd.face(f), "BMP")), OK),
    "tiff": (image(lambda f: odd.encoded(odd.face(f), "TIFF")), OK),
    # -- sizes and decompression bombs -----------------------------------------------------------------------
    "1x1": (image(lambda _: odd.plain(1, 1)), SMALL),
    "63 px side": (image(lambda _: odd.plain(63, 200)), SMALL),
    "8193 px side": (image(lambda _: odd.plain(8193, 64, "1")), TOO_LARGE),
    "9000x9000 1-bit png (81 Mpx, 1 MB)": (image(lambda _: odd.plain(9000, 9000, "1")), TOO_LARGE),
    "png header declaring 100000x100000": (image(lambda _: odd.png_declaring(100_000, 100_000)), TOO_LARGE),
    "png header declaring 7000x7000": (image(lambda _: odd.png_declaring(7000, 7000)), TOO_LARGE),
    "over max_image_bytes": (image(lambda _: b"\x89PNG" + bytes(3 * 1024 * 1024)), TOO_LARGE),
    # -- colour modes (all flattened to RGB) -----------------------------------------------------------------
    "mode CMYK (jpeg)": (image(lambda f: odd.in_mode(f, "CMYK", "JPEG")), OK),
    "mode RGBA": (image(lambda f: odd.in_mode(f, "RGBA")), OK),
    "mode LA": (image(lambda f: odd.in_mode(f, "LA")), OK),
    "mode L": (image(lambda f: odd.in_mode(f, "L")), OK),
    "mode P": (image(lambda f: odd.in_mode(f, "P")), OK),
    "mode P with transparency": (image(lambda f: odd.in_mode(f, "PA")), OK),
    "mode I;16": (image(lambda f: odd.in_mode(f, "I;16")), OK),
    "mode 1 (dithered bilevel)": (image(lambda f: odd.in_mode(f, "1")), NO_FACE),
    "fully transparent RGBA": (image(lambda _: odd.plain(256, 256, "RGBA")), NO_FACE),
    # -- EXIF orientations (each stored turned, upright after the tag) ----------------------------------------
    **{f"exif orientation {n}": (image(lambda f, n=n: odd.with_orientation(f, n)), OK) for n in range(2, 9)},
    # -- animated images (the first frame is used) -----------------------------------------------------------
    "animated webp": (image(lambda f: odd.animated(f, "WEBP")), OK),
    "animated png": (image(lambda f: odd.animated(f, "PNG")), OK),
    "multi-page tiff": (image(lambda f: odd.animated(f, "TIFF")), OK),
    "animated gif": (image(lambda f: odd.animated(f, "GIF")), FORMAT),
    # -- faces --------------------------------------------------------------------------------------------------
    "no face (a cat)": (image(lambda _: odd.no_face()), NO_FACE),
    "several faces (the largest is used)": (image(lambda _: odd.several_faces()), OK),
    "tiny face (24 px on 512)": (image(lambda f: odd.on_canvas(f, 24, 512)), NO_FACE),
    "face in profile (on its side)": (image(odd.in_profile), NO_FACE),
    "face cut by the border (left 45 %)": (image(lambda f: odd.cut_by_border(f, 0.45)), NO_FACE),
    # -- every field at and past its bounds, and with the wrong type ----------------------------------------
    "num_candidates 0": (fields(num_candidates="0"), INVALID),
    "num_candidates 8 (max)": (fields(num_candidates="8", top_k="8"), OK),
    "num_candidates 9": (fields(num_candidates="9"), INVALID),
    "num_candidates 1.5": (fields(num_candidates="1.5"), INVALID),
    "num_candidates text": (fields(num_candidates="many"), INVALID),
    "top_k 0": (fields(top_k="0"), INVALID),
    "top_k over num_candidates": (fields(num_candidates="2", top_k="3"), INVALID),
    "seed -1": (fields(seed="-1"), INVALID),
    "seed 2^31-1 (max)": (fields(seed=str(2**31 - 1)), OK),
    "seed 2^31": (fields(seed=str(2**31)), INVALID),
    "seed 10^400": (fields(seed="1" + "0" * 400), INVALID),
    "identity_weight 0": (fields(identity_weight="0"), OK),
    "identity_weight 1": (fields(identity_weight="1"), OK),
    "identity_weight -0.1": (fields(identity_weight="-0.1"), INVALID),
    "identity_weight 1.01": (fields(identity_weight="1.01"), INVALID),
    "identity_weight nan": (fields(identity_weight="nan"), INVALID),
    "identity_weight inf": (fields(identity_weight="inf"), INVALID),
    "upscale 3": (fields(upscale="3"), INVALID),
    "upscale 4": (fields(upscale="4"), OK),
    "upscale text": (fields(upscale="big"), INVALID),
    "subject empty": (fields(subject=""), INVALID),
    "subject 200 chars (max)": (fields(subject="a" * 200), OK),
    "subject 201 chars": (fields(subject="a" * 201), INVALID),
    "subject with a template field": (fields(subject="{subject.__class__} {0}"), OK),
    "steps 1": (fields(steps="1"), INVALID),
    "steps 2 (min)": (fields(steps="2"), OK),
    "steps 151": (fields(steps="151"), INVALID),
    "size 56": (fields(size="56"), INVALID),
    "size 100 (not a multiple of 8)": (fields(size="100"), INVALID),
    "size 2056": (fields(size="2056"), INVALID),
    "unknown field": (fields(strength="9"), INVALID),
    "no style": (fields(style=None), INVALID),
    # -- style ids -----------------------------------------------------------------------------------------------
    "unknown style": (fields(style="no-such-style"), (404, "unknown_style")),
    "unknown version": (fields(style="film-noir@99"), (404, "unknown_style")),
    "pinned version": (fields(style="film-noir@1"), OK),
    "style ../styles/film-noir": (fields(style="../styles/film-noir"), INVALID),
    "style film-noir/.": (fields(style="film-noir/."), INVALID),
    "style /etc/passwd": (fields(style="/etc/passwd"), INVALID),
    "style with NUL": (fields(style="film-noir\x00"), INVALID),
    "style upper case": (fields(style="FILM-NOIR"), INVALID),
    "style @ without version": (fields(style="film-noir@"), INVALID),
    "style 300 chars": (fields(style="a" * 300), INVALID),
    # -- bodies: JSON, multipart, content types, size ----------------------------------------------------------
    "json ok": (json_body(lambda f: {**FAST, "style": "film-noir", "image_base64": as_b64(f), "seed": 13}), OK),
    "json not utf-8 (fuzzer's bytes)": (json_body(lambda _: bytes.fromhex("695e07fffe58")), INVALID),
    "json string not utf-8": (json_body(lambda _: BAD_UTF8_STYLE), INVALID),
    "json syntax error": (json_body(lambda _: b'{"style": '), INVALID),
    "json nested 100000 deep": (json_body(lambda _: b"[" * 100_000 + b"]" * 100_000), INVALID),
    "json array": (json_body(lambda _: [1, 2, 3]), INVALID),
    "json image_base64 a number": (json_body(lambda _: {"style": "film-noir", "image_base64": 5}), INVALID),
    "json bad base64": (json_body(lambda _: {"style": "film-noir", "image_base64": "***"}), NOT_IMAGE),
    "json base64 of a cat": (json_body(lambda _: {"style": "film-noir", "image_base64": as_b64(odd.no_face())}), NO_FACE),
    "json num_candidates as text": (
        json_body(lambda f: {"style": "film-noir", "image_base64": as_b64(f), "num_candidates": "x"}), INVALID,
    ),
    "no content type": (raw(same, None), MEDIA),
    "text/plain": (raw(same, "text/plain"), MEDIA),
    "url-encoded form": (raw(lambda _: b"style=film-noir", "application/x-www-form-urlencoded"), MEDIA),
    "multipart without boundary": (raw(same, "multipart/form-data"), MALFORMED),
    "multipart with a broken body": (raw(lambda _: b"--b\r\nnot a part", "multipart/form-data; boundary=b"), MALFORMED),
    "multipart without an image": (
        raw(lambda f: multipart_body(f, "b", [("style", None, b"film-noir")]), "multipart/form-data; boundary=b"),
        INVALID,
    ),
    "multipart with the same image twice (a group of one person twice)": (
        raw(
            lambda f: multipart_body(f, "b", [("image", "a.png", f), ("image", "b.png", f), ("style", None, b"film-noir")]),
            "multipart/form-data; boundary=b",
        ),
        (422, "same_person"),
    ),
    "multipart style as a file (a second file)": (
        raw(lambda f: multipart_body(f, "b", [("image", "a.png", f), ("style", "s.txt", b"film-noir")]),
            "multipart/form-data; boundary=b"),
        MALFORMED,
    ),
    "multipart field not utf-8": (
        raw(lambda f: multipart_body(f, "b", [("image", "a.png", f), ("style", None, b"\xff\xfe")]),
            "multipart/form-data; boundary=b"),
        INVALID,
    ),
    "declared content-length over the limit": (declared_length(10**9), TOO_LARGE),
    # -- event streams -----------------------------------------------------------------------------------------
    "stream ok": (stream(same), OK),
    "stream with q-values": (stream(same, accept="application/json;q=0.5, text/event-stream"), OK),
    "stream, bytes not an image (in-band)": (stream(lambda _: b"garbage" * 10), (200, "invalid_image")),
    "stream, no face (in-band)": (stream(lambda _: odd.no_face()), (200, "no_face")),
    "stream, bad field (before the stream)": (stream(same, top_k="5"), INVALID),
    "stream, unknown style (before the stream)": (stream(same, style="no-such-style"), (404, "unknown_style")),
}


@pytest.fixture(scope="module")
def replicas_before(serve_url) -> dict[str, set[str]]:
    return replicas()


ANSWERS: dict[str, Answer] = {}  # what the matrix got, for the summary after it


@pytest.mark.parametrize("name", MATRIX)
def test_documented_answer(serve_url, sample_face, replicas_before, name):
    send, (status, code) = MATRIX[name]
    answer = ANSWERS[name] = send(serve_url, sample_face)
    assert answer.is_json, name
    assert (answer.status, answer.code) == (status, code), answer
    if answer.events:
        assert answer.events[-1] == ("error" if code else "result")


def test_matrix_is_large_enough():
    assert len(MATRIX) >= 60


def test_after_the_matrix_a_good_request_succeeds_on_the_same_replicas(serve_url, sample_face, replicas_before,
                                                                      capsys):
    assert post_portrait(serve_url, sample_face, {"style": "xmas-sweater"}).status == 200
    assert replicas() == replicas_before
    with capsys.disabled():
        print("\n" + json.dumps({"matrix": {
            "requests": len(ANSWERS), "server_errors": sum(a.status >= 500 for a in ANSWERS.values()),
            "non_json": sum(not a.is_json for a in ANSWERS.values()),
            "statuses": dict(sorted(Counter(str(a.status) for a in ANSWERS.values()).items())),
        }}))
