"""A stage's result stays readable after the replica that made it is gone: the ingress owns what a stage streams
back and hands it on unread (serve_app/graph.py), so a later stage still reads it, and the request needs no retry
(a ``retry`` event would hide a lost object).

The preprocessor's result, the reference (about 460 kB on the tiny profile: in Ray's object store, not inline),
is read by the layout generator at once and again by the fusion ranker after the blend. Every Preprocessor
replica is SIGKILLed as soon as the stream shows ``stage_finished`` for ``preprocess``; 30 sampler steps keep the
fusion ranker's read well after, and the test checks that the processes were gone before that read could start.

Not tested the same way: the blend sampler's candidates. Their one reader, the fusion ranker, is called as soon
as the blend is finished, before a kill sent on seeing ``stage_finished`` for ``blend`` can land.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import httpx
import pytest

from reliability_kit import FAST, exited, post_portrait, replaced, replica_pids, wait_until

pytestmark = pytest.mark.usefixtures("serve_url")
K = 2
FIELDS = {**FAST, "style": "film-noir", "num_candidates": str(K), "top_k": str(K), "steps": "30"}


@dataclass(frozen=True)
class KilledStream:
    events: list[tuple[str, dict]]
    gone_after_ms: float  # from sending the request to every killed process seen gone


def stream_killing(url: str, image: bytes, pids: list[int], stage: str) -> KilledStream:
    """An event-stream request during which the processes ``pids`` are SIGKILLed at ``stage_finished`` for
    ``stage``."""
    events: list[tuple[str, dict]] = []
    gone_after_ms = float("nan")
    start = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/portraits", files={"image": ("face.png", image)}, data=FIELDS,
                      headers={"accept": "text/event-stream"}, timeout=120) as response:
        assert response.status_code == 200, response.read()
        name = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if events[-1] == ("stage_finished", {"stage": stage}):
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    wait_until(lambda: all(exited(pid) for pid in pids), 10, every_s=0.005)
                    gone_after_ms = (time.monotonic() - start) * 1000
    return KilledStream(events, gone_after_ms)


def test_the_reference_outlives_the_preprocessor_that_made_it(serve_url, sample_face):
    # Warm replicas and style: the request's time then goes into its stages, whose durations bound the read below.
    wait_until(lambda: post_portrait(serve_url, sample_face, {"style": "film-noir"}).status == 200, 60)
    pids = replica_pids("Preprocessor")
    assert pids
    streamed = stream_killing(serve_url, sample_face, list(pids.values()), "preprocess")

    names = [name for name, _ in streamed.events]
    assert "retry" not in names and names[-1] == "result", names
    result = streamed.events[-1][1]
    assert len(result["images"]) == K and result["style"] == "film-noir@1"
    # The fusion ranker reads the reference no sooner than the request plus the three stages before it.
    timings = result["timings"]
    assert streamed.gone_after_ms < timings["preprocess"] + timings["layout"] + timings["blend"], (streamed, timings)
    wait_until(lambda: replaced("Preprocessor", set(pids)), 60)  # later tests find the stage served again
