"""What the logs hold. Privacy: nothing of a user's image or its embeddings reaches a log (a served request's image
hash, its bytes (raw, base64, hex) and its identity embedding and recognition descriptor (bytes and printed
values) are searched for in every file the session's Ray, Serve and replicas logged). Client errors: one line each,
no traceback."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odd_images import no_face
from reliability_kit import post_portrait, wait_until
from serve_app.pipeline.preprocess import preprocess

pytestmark = pytest.mark.usefixtures("serve_url")


def this_requests_face(sample_face: bytes) -> bytes:
    """The bundled face, made unique to this test by a faint pattern (its hash appears nowhere else)."""
    pixels = np.asarray(Image.open(io.BytesIO(sample_face)).convert("RGB")).copy()
    pixels[::7, ::7] ^= 1
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def traces(image: bytes, models) -> list[bytes]:
    """What a log must not hold: the image's sha256, pieces of its bytes, and its embeddings as bytes and text."""
    reference = preprocess(models, image)
    found = [hashlib.sha256(image).hexdigest().encode(), image[64:128].hex().encode(),
             base64.b64encode(image[:96]), image[200:264]]
    for vector in (reference.identity_embedding, reference.recognition_descriptor):
        values = np.asarray(vector, dtype=np.float32)
        found += [values[:16].tobytes(), base64.b64encode(values[:12].tobytes()), values[:8].tobytes().hex().encode()]
        found += [f"{v:.6f}".encode() for v in values[np.argsort(-np.abs(values))[:4]]]
    return found


def log_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_logs_hold_nothing_of_the_image_or_its_embeddings(serve_url, ray_logs, sample_face, models):
    image = this_requests_face(sample_face)
    answer = post_portrait(serve_url, image, {"style": "film-noir"})
    assert answer.status == 200
    wait_until(lambda: any("portraits" in p.name or "replica" in p.name for p in log_files(ray_logs)), 30)
    logs = {path: path.read_bytes() for path in log_files(ray_logs)}
    assert sum(len(text) for text in logs.values()) > 10_000  # the search ran over real logs
    for trace in traces(image, models):
        leaks = [str(path) for path, text in logs.items() if trace in text]
        assert not leaks, (trace[:40], leaks)


def test_a_refused_request_is_one_log_line_without_a_traceback(serve_url, ray_logs):
    """A client error (here no face, found in the preprocessor replica) is logged once by the ingress, as one line
    with the request id, status and code; no replica logs its traceback."""
    request_id = "refused-" + hashlib.sha256(b"no face, once").hexdigest()[:12]
    answer = post_portrait(serve_url, no_face(), {"style": "film-noir"}, headers={"x-request-id": request_id})
    assert (answer.status, answer.code) == (422, "no_face")
    line = f"request {request_id} refused: 422 no_face".encode()

    def logged() -> bool:
        return any(line in path.read_bytes() for path in (ray_logs / "serve").glob("*.log"))

    wait_until(logged, 30)
    serve_logs = b"".join(path.read_bytes() for path in (ray_logs / "serve").glob("*.log"))
    assert serve_logs.count(line) == 1
    tracebacks = {str(path): text[text.find(b"NoFaceError") - 600 : text.find(b"NoFaceError") + 100]
                  for path in log_files(ray_logs) if b"NoFaceError" in (text := path.read_bytes())}
    assert not tracebacks
