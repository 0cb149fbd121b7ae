"""Load and dead replicas through real HTTP: only 200 or a JSON 503 (or 408), never a hang or a non-JSON body,
and after a stage's replica process is killed mid-load a fresh request succeeds within 30 s.

The figures (p50/p99 under load, answers per killed stage, seconds to the next 200) are printed as JSON lines.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from itertools import cycle, islice

import httpx
import pytest

from reliability_kit import FAST, STAGES, Answer, concurrently, kill_replica, percentile, post_portrait, replicas, wait_until

pytestmark = pytest.mark.usefixtures("serve_url")
STYLES = ("xmas-sweater", "film-noir", "summer-beach")


def logged_retries(logs: Path) -> int:
    """Requests the ingress retried after a stage died, as its log tells (one line each)."""
    return sum(path.read_bytes().count(b"stage_unavailable; retrying once") for path in logs.rglob("*.log"))


def report(capsys: pytest.CaptureFixture, **figures) -> None:
    with capsys.disabled():
        print("\n" + json.dumps(figures))


def test_load_at_concurrency_16_answers_only_200_or_json_503(serve_url, sample_face, capsys):
    """16 clients that each honour Retry-After, as a well-behaved client does, against 8 admitted requests."""

    def polite_request(style: str) -> Answer:
        answer = post_portrait(serve_url, sample_face, {"style": style})
        if answer.status == 503 and answer.retry_after:
            time.sleep(float(answer.retry_after))
        return answer

    answers = concurrently([lambda s=s: polite_request(s) for s in islice(cycle(STYLES), 208)], clients=16)
    assert all(answer.is_json for answer, _ in answers)
    statuses = [answer.status for answer, _ in answers]
    assert set(statuses) <= {200, 503} and 200 in statuses
    assert all(a.code == "overloaded" and a.retry_after for a, _ in answers if a.status == 503)
    ok = [seconds for answer, seconds in answers if answer.status == 200]
    report(capsys, load={"requests": len(answers), "clients": 16, "ok": len(ok), "overloaded": statuses.count(503),
                         "p50_s": round(percentile(ok, 0.5), 2), "p99_s": round(percentile(ok, 0.99), 2)})


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_mid_load_costs_at_most_a_json_503_and_comes_back(serve_url, sample_face, stage, ray_logs,
                                                                         capsys):
    killed: list[str] = []
    retries_before = logged_retries(ray_logs)

    def request(index: int):
        if index == 4:  # a few requests are under way in the graph when the replica dies
            killed.append(kill_replica(stage))
        return post_portrait(serve_url, sample_face, {"style": STYLES[index % 3], "seed": str(index)})

    answers = concurrently([lambda i=i: request(i) for i in range(12)], clients=4)
    assert all(answer.is_json for answer, _ in answers)
    outcomes = [(answer.status, answer.code) for answer, _ in answers]
    assert set(outcomes) <= {(200, None), (503, "stage_unavailable"), (503, "overloaded"), (408, "timeout")}
    assert all(answer.retry_after for answer, _ in answers if answer.status == 503)
    back_in = wait_until(lambda: post_portrait(serve_url, sample_face, {"style": "film-noir"}).status == 200, 30)
    wait_until(lambda: killed[0] not in replicas().get(stage, set()), 30)  # it really died, and Serve noticed
    report(capsys, fault={"stage": stage, "answers": {f"{s} {c or ''}".strip(): outcomes.count((s, c))
                                                      for s, c in set(outcomes)}, "next_200_within_s": round(back_in, 1),
                         "retried": logged_retries(ray_logs) - retries_before})


def test_a_sampler_killed_while_sampling_a_request_is_retried_transparently(serve_url, sample_face, ray_logs, capsys):
    """Killed at the request's first sampler step (seen on its event stream): the ingress retries the whole chain
    once, with the same seed, and the client gets its result after a ``retry`` event."""
    events: list[str] = []
    fields = {**FAST, "style": "film-noir", "steps": "30"}
    with httpx.stream("POST", f"{serve_url}/v1/portraits", files={"image": ("f.png", sample_face)}, data=fields,
                      headers={"accept": "text/event-stream"}, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if events.count("step") == 1 and "retry" not in events:
                    killed = kill_replica("BlendSampler")
    assert "retry" in events and events[-1] == "result", events
    wait_until(lambda: killed not in replicas().get("BlendSampler", set()), 30)
    report(capsys, retried_stream={"steps_before_retry": events[: events.index("retry")].count("step"),
                                   "steps_after_retry": events[events.index("retry") :].count("step")})
