"""Contract fuzzing of the served API with Schemathesis: every operation of ``/openapi.json``, with data that fits
its schema and data that does not, over real HTTP. Each response must be no server error, with a status code,
content type and body the schema documents for it. The admin routes are fuzzed without a token, with a wrong one
and with the right one.

Not checked: ``positive_data_acceptance`` (that schema-valid bodies are accepted). ``top_k`` ≤ ``num_candidates``
is a rule across two fields that JSON Schema cannot state; the field's description says so and the API answers 422,
which that check would call a failure.

Bounded: the fuzzing phase draws 8 cases per operation, the coverage phase adds the schema's boundary cases (most
of them refused at once). A portrait body names a style that does not exist (a quick 404), except about one
schema-valid body in six, pointed at film-noir with the sample face as a 64 px, at most 4-step, at most
two-candidate generation, half of them as an event stream (each event checked against the documented one).
Curation writes go to a throwaway style only; the last test checks that every other style is as it was.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import httpx
import pytest
import schemathesis
from conftest import REPO
from curation import AUTH, manifest_yaml, publish
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.api.app import create_app

THROWAWAY = "contract-fuzz"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Without the token an admin route answers 401, with a wrong one 403, whatever the rest of the request.
REFUSED = (({}, 401), ({"Authorization": "Bearer not-the-token"}, 403))
CONFIG = {
    "seed": 2024,
    "request-timeout": 120,
    "generation": {"mode": "all", "max-examples": 8, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
}
STYLE_LORA: Path = REPO / "styles" / "film-noir" / "lora.safetensors"

# Built at collection as the served app builds it (building the schema reads no services), because the lazy
# ``schemathesis.pytest.from_fixture`` of Schemathesis 4.32.0 fails under pytest 9 (it sets ``Function._nodeid``).
# test_the_served_schema_is_the_one_fuzzed checks that ``/openapi.json`` is this schema.
SPEC = create_app(services=None).openapi()
schema = schemathesis.openapi.from_dict(SPEC, config=schemathesis.Config.from_dict(CONFIG))


def others(url: str) -> list[dict]:
    """Every style but the throwaway, as the admin listing shows it."""
    return [style for style in httpx.get(f"{url}/admin/styles", headers=AUTH).json() if style["id"] != THROWAWAY]


@pytest.fixture(scope="module")
def library_before(serve_url: str) -> list[dict]:
    """The library before fuzzing, the throwaway style published (its 201 checked against the schema too)."""
    created = publish(serve_url, manifest_yaml(THROWAWAY), STYLE_LORA.read_bytes())
    assert created.status_code == 201, created.text
    created.request.read()  # Schemathesis reads the request back, and httpx streams multipart
    schema["/admin/styles"]["POST"].validate_response(created)
    return others(serve_url)


def one_in(n: int, *values: object) -> bool:
    """A stable choice of one case in ``n`` (the same cases on every run)."""
    return zlib.crc32(repr(values).encode()) % n == 0


def spare_other_styles(case: schemathesis.Case, url: str) -> None:
    """A PATCH or DELETE naming a style of the library goes to the throwaway style instead, as does one in two
    schema-valid cases naming none (so that its 200 is fuzzed too); the others stay a 404 that changes nothing."""
    style_id = case.path_parameters.get("style_id")
    if not isinstance(style_id, str):
        return
    positive = case.meta.generation.mode == GenerationMode.POSITIVE
    if style_id in {style["id"] for style in others(url)} or (positive and one_in(2, style_id)):
        case.path_parameters["style_id"] = THROWAWAY


def bound_portrait(case: schemathesis.Case, face: bytes) -> dict[str, str]:
    """One schema-valid portrait body in six becomes a small film-noir generation of the sample face; the headers
    to send (an event stream for half of them)."""
    body = case.body
    if case.meta.generation.mode != GenerationMode.POSITIVE or not isinstance(body, dict):
        return {}
    if not one_in(6, sorted(body.items(), key=str)):
        return {}
    body["style"] = "film-noir"
    if case.media_type == "application/json":
        body["image_base64"] = base64.b64encode(face).decode()
    else:
        body["image"] = face
    body["size"] = 64
    body["steps"] = min(body.get("steps") or 4, 4)
    body["num_candidates"] = min(body.get("num_candidates", 2), 2)
    return {"Accept": "text/event-stream"} if one_in(2, body) else {}


def test_the_served_schema_is_the_one_fuzzed(serve_url: str) -> None:
    assert httpx.get(f"{serve_url}/openapi.json").json() == SPEC


@schema.parametrize()
@pytest.mark.usefixtures("library_before")
def test_every_operation_keeps_its_contract(case: schemathesis.Case, serve_url: str, sample_face: bytes) -> None:
    if case.path.startswith("/admin"):
        spare_other_styles(case, serve_url)
        for headers, status in REFUSED:
            assert case.call_and_validate(base_url=serve_url, headers=headers, checks=CHECKS).status_code == status
        case.call_and_validate(base_url=serve_url, headers=AUTH, checks=CHECKS)
        return
    headers = bound_portrait(case, sample_face) if case.path == "/v1/portraits" else {}
    case.call_and_validate(base_url=serve_url, headers=headers, checks=CHECKS)


def test_fuzzing_changed_no_style_but_the_throwaway(serve_url: str, library_before: list[dict]) -> None:
    assert others(serve_url) == library_before
