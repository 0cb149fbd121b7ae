"""Asynchronous jobs: a burst the synchronous path refuses, sent as jobs, is done whole; what a job costs one client
over the synchronous call; how soon a canceled job leaves the replicas idle.

The tiny profile with ``max_in_flight`` at ``--max-in-flight`` (a copy of the config, its jobs and their results in
a fresh temporary folder). In order:

- ``one_client``: ``--pairs`` times, an ordinary request synchronously, then the same request as a job (submit, then
  ``GET /v1/jobs/{id}`` with ``Prefer: wait`` until it ended): the medians, and the job's over the synchronous
  (``job_over_sync``; the goal is ≤ 1.10). The synchronous median is the idle baseline below.
- ``cancel``: a long job (N=2, 128 px, ``--long-steps`` steps) is canceled at its first blend step (seen on its event
  stream), and one ordinary request is sent as soon as the cancel is answered. ``cancel_to_idle_s`` is that request's
  latency over the baseline: the seconds the canceled job's leftover work still held the replicas (0: none). The
  denoising-step counter is not used: Ray exports metrics every 10 s by default, coarser than the figure.
- ``burst``: ``--burst`` small requests (N=1, 6 steps, 64 px, ×1) from ``--clients`` clients at once, first to
  ``POST /v1/portraits`` (statuses counted: admission answers the excess with 503), then to ``POST /v1/jobs``:
  statuses counted (``accepted``: 202), then every accepted job followed to its outcome (``succeeded``, ``failed``,
  ``canceled``; ``lost``: accepted and never seen ended within ``--burst-wait-s``, or not found). ``submit_ms``:
  p50/p99 of those submits, answered while the service is saturated.

    python bench/jobs.py [--burst 200 --clients 32 --max-in-flight 8] [--pairs 5] [--long-steps 150]

Runs the tiny profile through ``configs/serve.local.yaml`` as the README starts it. Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import yaml
from serving import ORDINARY, REPO, served, summary, timed_post

ENDED = ("succeeded", "failed", "canceled")
Answer = httpx.Response | httpx.HTTPError
"""What a request got: a response, or the exception when none came."""


def job_config(base: Path, folder: Path, max_in_flight: int) -> Path:
    """``base`` with ``max_in_flight`` overridden and the jobs kept under ``folder``, written there."""
    config = yaml.safe_load(base.read_text())
    (app,) = config["applications"]
    app["args"] |= {
        "max_in_flight": max_in_flight,
        "jobs_store": f"sqlite:///{folder / 'jobs.sqlite3'}",
        "job_results": str(folder / "results"),
    }
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def ended(base_url: str, location: str, deadline: float) -> dict | None:
    """The job once it ended (``Prefer: wait``, asked again until it has); None if not by ``deadline`` (monotonic)
    or not found."""
    while time.monotonic() < deadline:
        response = httpx.get(f"{base_url}{location}", headers={"prefer": "wait=30"}, timeout=60)
        if response.status_code != 200:
            return None
        job = response.json()
        if job["status"] in ENDED:
            return job
    return None


def seconds_between(job: dict, since: str, until: str) -> float:
    return (datetime.fromisoformat(job[until]) - datetime.fromisoformat(job[since])).total_seconds()


def one_client(base_url: str, image: bytes, fields: dict, pairs: int) -> dict:
    """A synchronous request, then the same as a job, ``pairs`` times; medians in ms."""
    sync_ms, job_ms, submit_ms, wait_ms = [], [], [], []
    for _ in range(pairs):
        latency, response = timed_post(f"{base_url}/v1/portraits", image, fields)
        response.raise_for_status()
        sync_ms.append(latency)
        began = time.perf_counter()
        latency, submitted = timed_post(f"{base_url}/v1/jobs", image, fields)
        submitted.raise_for_status()
        job = ended(base_url, submitted.headers["location"], time.monotonic() + 600)
        assert job is not None and job["status"] == "succeeded", job
        job_ms.append((time.perf_counter() - began) * 1000)
        submit_ms.append(latency)
        wait_ms.append(seconds_between(job, "created_at", "started_at") * 1000)
    sync, end_to_end = statistics.median(sync_ms), statistics.median(job_ms)
    return {
        "pairs": pairs,
        "sync_ms": round(sync, 1),
        "job_ms": round(end_to_end, 1),
        "job_over_sync": round(end_to_end / sync, 3),
        "job_submit_ms": round(statistics.median(submit_ms), 1),
        "job_wait_ms": round(statistics.median(wait_ms), 1),
    }


def first_blend_step(base_url: str, job_id: str) -> dict:
    """Follows the job's events until its first ``step``; that step's data."""
    with httpx.stream("GET", f"{base_url}/v1/jobs/{job_id}/events", timeout=600) as stream:
        name = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name == "step":
                return json.loads(line.removeprefix("data: "))
    raise RuntimeError(f"job {job_id} ended before its blend sampler stepped")


def cancel_to_idle(base_url: str, image: bytes, long: dict, ordinary: dict, baseline_ms: float) -> dict:
    submitted = httpx.post(f"{base_url}/v1/jobs", files={"image": ("face.png", image)}, data=long, timeout=60)
    submitted.raise_for_status()
    job_id = submitted.json()["id"]
    step = first_blend_step(base_url, job_id)
    canceled_at = time.time()
    httpx.post(f"{base_url}/v1/jobs/{job_id}/cancel", timeout=60).raise_for_status()
    next_ms, response = timed_post(f"{base_url}/v1/portraits", image, ordinary)
    response.raise_for_status()
    job = ended(base_url, submitted.headers["location"], time.monotonic() + 120)
    assert job is not None and job["status"] == "canceled", job
    return {
        "canceled_at_step": step["step"],
        "steps": step["total"],
        "canceled_after_s": round(datetime.fromisoformat(job["finished_at"]).timestamp() - canceled_at, 2),
        "next_request_ms": round(next_ms, 1),
        "next_over_baseline": round(next_ms / baseline_ms, 2),
        "cancel_to_idle_s": round(max(0.0, next_ms - baseline_ms) / 1000, 2),
    }


def burst(
    url: str, image: bytes, fields: dict, requests: int, clients: int
) -> tuple[list[float], list[Answer], float]:
    """``requests`` requests from ``clients`` clients starting together, each client sending the next request as
    soon as its last is answered: each request's latency (ms) and response (or the exception when none came), in the
    order sent; the seconds they all took."""
    sent = iter(range(requests))
    lock, start = threading.Lock(), threading.Barrier(clients + 1)
    answers: dict[int, tuple[float, Answer]] = {}

    def client() -> None:
        start.wait()
        while (index := next_index()) is not None:
            began = time.perf_counter()
            try:
                answers[index] = timed_post(url, image, {**fields, "seed": index})
            except httpx.HTTPError as error:
                answers[index] = (time.perf_counter() - began) * 1000, error

    def next_index() -> int | None:
        with lock:
            return next(sent, None)

    with ThreadPoolExecutor(clients) as pool:
        running = [pool.submit(client) for _ in range(clients)]
        start.wait()
        began = time.perf_counter()
        for future in running:
            future.result()
    elapsed = time.perf_counter() - began
    ordered = [answers[index] for index in sorted(answers)]
    return [latency for latency, _ in ordered], [answer for _, answer in ordered], elapsed


def statuses(answers: list[Answer]) -> dict[str, int]:
    counted = Counter(str(a.status_code) if isinstance(a, httpx.Response) else type(a).__name__ for a in answers)
    return dict(sorted(counted.items()))


def burst_as_jobs(base_url: str, image: bytes, fields: dict, requests: int, clients: int, wait_s: float) -> dict:
    began = time.monotonic()
    latencies, answers, _ = burst(f"{base_url}/v1/jobs", image, fields, requests, clients)
    accepted = [a.headers["location"] for a in answers if isinstance(a, httpx.Response) and a.status_code == 202]
    deadline = began + wait_s
    # in the order sent, about the order the runners take them: most have ended by the time they are asked
    outcomes = [ended(base_url, location, deadline) for location in accepted]
    counted = Counter(job["status"] if job else "lost" for job in outcomes)
    failed = Counter(job["error"]["error"]["code"] for job in outcomes if job and job["status"] == "failed")
    return {
        "statuses": statuses(answers),
        "accepted": len(accepted),
        **{outcome: counted[outcome] for outcome in (*ENDED, "lost")},
        "failed_codes": dict(failed),
        "seconds": round(time.monotonic() - began, 1),
        "submit_ms": summary(latencies) | {"n": len(latencies)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=200, help="requests in the burst")
    parser.add_argument("--clients", type=int, default=32, help="clients sending the burst")
    parser.add_argument("--max-in-flight", type=int, default=8, help="the service's max_in_flight")
    parser.add_argument("--pairs", type=int, default=5, help="synchronous request and job pairs at one client")
    parser.add_argument("--long-steps", type=int, default=150, help="steps of the job that is canceled")
    parser.add_argument("--burst-wait-s", type=float, default=600, help="at most this long for the burst's jobs")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.local.yaml")
    args = parser.parse_args()

    from serve_app.sample import sample_face

    image = sample_face()
    ordinary = ORDINARY
    small = ordinary | {"num_candidates": 1, "upscale": 1, "size": 64, "steps": 6}
    long = ordinary | {"upscale": 1, "steps": args.long_steps}
    port = yaml.safe_load(args.config.read_text())["http_options"]["port"]
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as folder:
        config = job_config(args.config, Path(folder), args.max_in_flight)
        with served(config, port, start_timeout_s=600) as url:
            base_url = url.removesuffix("/v1/portraits")
            for fields in (ordinary, ordinary, small):  # warm-up: style load, first-call allocations
                timed_post(url, image, fields)[1].raise_for_status()
            alone = one_client(base_url, image, ordinary, args.pairs)
            cancel = cancel_to_idle(base_url, image, long, ordinary, alone["sync_ms"])
            _, answers, sync_s = burst(url, image, small, args.burst, args.clients)
            jobs = burst_as_jobs(base_url, image, small, args.burst, args.clients, args.burst_wait_s)
    result = {
        "profile": "tiny",
        "config": os.path.relpath(args.config, REPO),
        "cpus": os.cpu_count(),
        "max_in_flight": args.max_in_flight,
        "ordinary": ordinary,
        "small": small,
        "long": long,
        "submit_ms": jobs.pop("submit_ms"),
        "burst": {
            "requests": args.burst,
            "clients": args.clients,
            "synchronous": {"statuses": statuses(answers), "seconds": round(sync_s, 1)},
            "jobs": jobs,
        },
        "one_client": alone,
        "cancel": cancel,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
