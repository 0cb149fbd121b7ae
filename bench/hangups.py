"""Clients that give up: does the work of a request nobody waits for stop, so the next client is served at once?

An ordinary request's latency on the idle service is the baseline (median of ``--baseline`` requests). Then, for
each way of giving up, ``--clients`` clients send a heavy request together and give up on it:

- ``sync``: a synchronous call closed ``--hang-up-s`` seconds in;
- ``stream``: an event stream closed after its ``--events``-th event (while the early stages run);
- ``stream_in_blend``: an event stream closed after its first ``step`` event (the blend sampler runs);
- ``timeout``: a synchronous call answered 408 by the service after ``--timeout-s`` seconds (Serve's
  ``x-request-timeout-seconds``);

and one ordinary request is sent as soon as they have all given up. Its latency over the baseline is the figure
(1.0: the abandoned work cost the next client nothing). Before the next way, the service is drained: ordinary
requests until one is within 1.5× the baseline (at most ``--drain-s`` seconds).

    python bench/hangups.py [--clients 4] [--heavy-candidates 8 --heavy-size 256 --heavy-steps 60]

Runs the tiny profile through ``configs/serve.local.yaml`` as the README starts it. Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from serving import ORDINARY, REPO, served, timed_post



def hang_up_sync(url: str, image: bytes, fields: dict, after_s: float) -> str:
    """A synchronous call closed after ``after_s`` seconds; what it got."""
    try:
        response = httpx.post(url, files={"image": ("face.png", image)}, data=fields, timeout=after_s)
        return str(response.status_code)
    except httpx.TimeoutException:
        return "hung_up"


def hang_up_stream(url: str, image: bytes, fields: dict, events: int, named: str = "") -> str:
    """An event stream closed after its ``events``-th event (named ``named``, if given); what it got."""
    seen = 0
    headers = {"accept": "text/event-stream"}
    with httpx.stream("POST", url, files={"image": ("face.png", image)}, data=fields, headers=headers,
                      timeout=600) as response:
        for line in response.iter_lines():
            if line.startswith(f"event: {named}"):
                seen += 1
                if seen >= events:
                    return "hung_up"
    return str(response.status_code)


def time_out(url: str, image: bytes, fields: dict, timeout_s: float) -> str:
    """A synchronous call the service answers 408 after ``timeout_s`` seconds; what it got."""
    headers = {"x-request-timeout-seconds": str(timeout_s)}
    response = httpx.post(url, files={"image": ("face.png", image)}, data=fields, headers=headers, timeout=600)
    return str(response.status_code)


def give_up_together(clients: int, give_up: Callable[[], str]) -> list[str]:
    """``clients`` clients giving up at once; returns when they all have, with what each got."""
    outcomes: list[str] = []
    threads = [threading.Thread(target=lambda: outcomes.append(give_up())) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def ordinary_ms(url: str, image: bytes, fields: dict) -> float:
    latency, response = timed_post(url, image, fields)
    response.raise_for_status()
    return latency


def drain(url: str, image: bytes, fields: dict, baseline_ms: float, within_s: float) -> float:
    """Ordinary requests until one is within 1.5× the baseline; the seconds that took."""
    began = time.monotonic()
    while ordinary_ms(url, image, fields) > 1.5 * baseline_ms and time.monotonic() - began < within_s:
        pass
    return round(time.monotonic() - began, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4, help="clients giving up together")
    parser.add_argument("--heavy-candidates", type=int, default=8)
    parser.add_argument("--heavy-size", type=int, default=256)
    parser.add_argument("--heavy-steps", type=int, default=60)
    parser.add_argument("--hang-up-s", type=float, default=2.0, help="a synchronous call is closed this far in")
    parser.add_argument("--events", type=int, default=3, help="a stream is closed after this many events")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="x-request-timeout-seconds of the 408 case")
    parser.add_argument("--baseline", type=int, default=5, help="ordinary requests on the idle service")
    parser.add_argument("--drain-s", type=float, default=300, help="at most this long to wait for an idle service")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.local.yaml")
    args = parser.parse_args()

    from serve_app.sample import sample_face

    image = sample_face()
    ordinary = ORDINARY
    heavy = ordinary | {"num_candidates": args.heavy_candidates, "size": args.heavy_size, "steps": args.heavy_steps}
    port = yaml.safe_load(args.config.read_text())["http_options"]["port"]
    ways = {
        "sync": lambda: hang_up_sync(url, image, heavy, args.hang_up_s),
        "stream": lambda: hang_up_stream(url, image, heavy, args.events),
        "stream_in_blend": lambda: hang_up_stream(url, image, heavy, 1, "step"),
        "timeout": lambda: time_out(url, image, heavy, args.timeout_s),
    }
    with served(args.config, port, start_timeout_s=600) as url:
        for _ in range(2):  # warm-up: style load, first-call allocations
            ordinary_ms(url, image, ordinary)
        baseline_ms = statistics.median(ordinary_ms(url, image, ordinary) for _ in range(args.baseline))
        scenarios = {}
        for way, give_up in ways.items():
            began = time.monotonic()
            outcomes = give_up_together(args.clients, give_up)
            gave_up_s = time.monotonic() - began
            next_ms = ordinary_ms(url, image, ordinary)
            scenarios[way] = {
                "clients": sorted(outcomes),
                "gave_up_after_s": round(gave_up_s, 1),
                "next_request_ms": round(next_ms, 1),
                "next_over_baseline": round(next_ms / baseline_ms, 2),
                "drained_after_s": drain(url, image, ordinary, baseline_ms, args.drain_s),
            }
    result = {
        "profile": "tiny",
        "config": os.path.relpath(args.config, REPO),
        "cpus": os.cpu_count(),
        "heavy": heavy,
        "ordinary": ordinary,
        "baseline_ms": round(baseline_ms, 1),
        "scenarios": scenarios,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
