"""Load on the local service: requests/s and p50/p99 latency at several concurrency levels, with every answer
counted.

At each level, ``concurrency`` clients start together and each sends ``--requests`` requests one after the
other (closed loop: a level sends concurrency × requests). Per level: statuses (200 / 503 / other, the others
named in ``other``: a status, or the exception when no response came), bodies that are not JSON (every answer
of the service should be JSON, errors included), requests/s (answers of any status, and 200s alone) and p50/p99
latency of the 200s (ms).

    python bench/load.py [--requests 3] [--concurrency 1 4 16] [--size 128] [--steps 8] [--candidates 2] [--top-k 1]

Runs the tiny profile through ``configs/serve.local.yaml`` as the README starts it. Prints JSON on the last
line.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml
from serving import REPO, post, served, summary, timed_post

STYLE = "xmas-sweater"


def client_run(url: str, image: bytes, fields: dict, requests: int, start: threading.Barrier) -> list[dict]:
    """One client: ``requests`` requests in a row on one connection; what each one got."""
    outcomes = []
    with httpx.Client() as client:
        start.wait()
        for _ in range(requests):
            began = time.perf_counter()
            try:
                latency, response = timed_post(url, image, fields, client)
            except httpx.HTTPError as error:
                latency = (time.perf_counter() - began) * 1000
                outcomes.append({"status": type(error).__name__, "latency_ms": latency, "json": False})
                continue
            try:
                response.json()
                is_json = True
            except ValueError:
                is_json = False
            outcomes.append({"status": response.status_code, "latency_ms": latency, "json": is_json})
    return outcomes


def run_level(url: str, image: bytes, fields: dict, concurrency: int, requests: int) -> dict:
    start = threading.Barrier(concurrency + 1)
    with ThreadPoolExecutor(concurrency) as pool:
        clients = [pool.submit(client_run, url, image, fields, requests, start) for _ in range(concurrency)]
        start.wait()
        began = time.perf_counter()
        outcomes = [outcome for client in clients for outcome in client.result()]
    elapsed = time.perf_counter() - began
    statuses = Counter(outcome["status"] for outcome in outcomes)
    ok = [outcome["latency_ms"] for outcome in outcomes if outcome["status"] == 200]
    other = {str(status): n for status, n in sorted(statuses.items(), key=str) if status not in (200, 503)}
    return {
        "requests": len(outcomes),
        "statuses": {"200": statuses[200], "503": statuses[503], "other": sum(other.values())},
        "other": other,
        "non_json": sum(not outcome["json"] for outcome in outcomes),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(outcomes) / elapsed, 3),
        "ok_per_s": round(len(ok) / elapsed, 3),
        "latency_ms": summary(ok) if ok else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3, help="requests each client sends at each level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--size", type=int, default=128, help="generated side (upscaled ×2)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=2, help="N candidates sampled per request")
    parser.add_argument("--top-k", type=int, default=1, help="K portraits returned per request")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.local.yaml")
    args = parser.parse_args()

    from serve_app.__main__ import sample_face

    image = sample_face()
    fields = {
        "style": STYLE,
        "num_candidates": args.candidates,
        "top_k": args.top_k,
        "upscale": 2,
        "size": args.size,
        "steps": args.steps,
        "seed": 1,
    }
    port = yaml.safe_load(args.config.read_text())["http_options"]["port"]
    began = time.perf_counter()
    with served(args.config, port, start_timeout_s=600) as url:
        start_s = time.perf_counter() - began
        for _ in range(2):  # warm-up: style load, first-call allocations
            post(url, image, fields)
        levels = {str(c): run_level(url, image, fields, c, args.requests) for c in args.concurrency}
    result = {
        "profile": "tiny",
        "config": os.path.relpath(args.config, REPO),
        "cpus": os.cpu_count(),
        "workload": fields | {"requests_per_client": args.requests},
        "service_start_s": round(start_s, 1),
        "concurrency": levels,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
