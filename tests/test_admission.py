"""Admission by count and by cost, without Ray: what a request costs, the 422 over the per-request ceiling (naming
the fields to lower) and the 503 once the work in flight would pass the budget. (Through HTTP:
tests/reliability/test_cancellation.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from serve_app.admission import Admission, request_cost
from serve_app.errors import OverloadedError, RequestTooCostlyError
from serve_app.pipeline.request import FacePrior, PortraitRequest, StyleLora
from serve_app.settings import PortraitAppArgs

DEFAULT = PortraitRequest(
    prompt="a person",
    negative_prompt="",
    lora=StyleLora(key="xmas-sweater@1", scale=0.9),
    seeds=(1, 2, 3, 4),
    top_k=2,
    size=512,
    steps=25,
    guidance_scale=7.5,
    identity_weight=0.8,
    t1=0.35,
    upscale=2,
    face_priors=(FacePrior(center=(0.5, 0.4), radii=(0.2, 0.26)),),
)
# The schema's most expensive request: N=8, 2048 px, 150 steps, ×4 (K=8).
HEAVIEST = replace(DEFAULT, seeds=tuple(range(8)), top_k=8, size=2048, steps=150, upscale=4)


def test_cost_grows_with_candidates_steps_area_and_upscale():
    assert request_cost(DEFAULT) == 4 * 25 + 1.5 * 2 * 4  # 112 units: one 512² candidate step is one unit
    assert request_cost(replace(DEFAULT, steps=50)) - request_cost(DEFAULT) == 4 * 25
    assert request_cost(replace(DEFAULT, size=1024)) == 4 * request_cost(DEFAULT)
    assert request_cost(replace(DEFAULT, upscale=4)) - request_cost(DEFAULT) == 1.5 * 2 * (16 - 4)
    assert request_cost(HEAVIEST) == 16 * (8 * 150 + 1.5 * 8 * 16)  # 22,272 units: 199 default requests


def test_a_request_over_the_ceiling_is_refused_whatever_the_load_naming_what_to_lower():
    admission = Admission(32, 4000, 1000, lambda *_: None)
    assert admission.cost(DEFAULT) == 112
    with pytest.raises(RequestTooCostlyError) as refused:
        admission.cost(HEAVIEST)
    assert refused.value.http_status == 422
    body = refused.value.to_dict()["error"]
    assert body["code"] == "request_too_costly"
    assert "22272 units" in body["message"] and "1000" in body["message"]
    assert [field["field"] for field in body["fields"]] == ["num_candidates", "steps", "size", "upscale"]
    # only the fields above their minimum are named
    lean = replace(HEAVIEST, seeds=(1,), upscale=1)
    with pytest.raises(RequestTooCostlyError) as refused:
        admission.cost(lean)
    assert list(refused.value.fields) == ["steps", "size"]


def test_work_in_flight_is_admitted_up_to_the_budget_then_refused_with_503_until_it_ends():
    reported: list[tuple[int, float]] = []
    admission = Admission(32, 300, 300, lambda requests, cost: reported.append((requests, cost)))
    with admission.admitted(112), admission.admitted(112):
        with pytest.raises(OverloadedError) as refused:
            with admission.admitted(112):
                pass
        assert refused.value.http_status == 503 and "224 of 300 units" in refused.value.message
        with admission.admitted(76):  # what is left fits exactly
            assert admission.cost_in_flight == 300
    assert admission.in_flight == 0 and admission.cost_in_flight == 0
    assert reported == [(1, 112), (2, 224), (3, 300), (2, 224), (1, 112), (0, 0)]


def test_the_count_limit_still_holds_for_cheap_requests():
    admission = Admission(1, 4000, 1000, lambda *_: None)
    with admission.admitted(1), pytest.raises(OverloadedError):
        admission.check(1)


def test_a_ceiling_over_the_budget_is_refused_at_start():
    with pytest.raises(ValidationError, match="max_request_cost"):
        PortraitAppArgs(max_request_cost=5000, max_cost_in_flight=4000)
