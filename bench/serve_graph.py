"""The Serve graph against the in-process pipeline, on the tiny profile, in one run:

- overhead: median latency of sequential HTTP requests through the whole graph / the in-process pipeline on the
  same inputs, the two interleaved while the service runs (target ≤ 1.05), and where the difference goes: the
  stages' own time (the sum of a response's ``timings``) against the rest (hops, batch waits, encoding, HTTP);
- throughput: requests/s with 8 concurrent clients / with 1 client (cross-request batching; target ≥ 2);
- style switch: extra latency of alternating two cached styles over repeating one, as a fraction of a request
  (target ≤ 0.05).

    python bench/serve_graph.py [--requests 6] [--concurrent-requests 24]

Prints JSON on the last line. The service runs as the README starts it: ``serve run configs/serve.local.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml
from serving import REPO, post, served

FIELDS = {"num_candidates": 4, "top_k": 2, "seed": 1}


def in_process_runner(image: bytes, style: str, torch_threads: int | None):
    """A warmed in-process pipeline with the replicas' torch thread count; each call runs one request and
    returns its latency and the sum of its stage timings, in ms."""
    import torch

    from serve_app.in_process import generate
    from serve_app.pipeline.models import load_models
    from serve_app.pipeline.portrait import PortraitPipeline
    from serve_app.schemas import PortraitOptions
    from serve_app.styles.catalog import StyleCatalog

    torch.set_num_threads(torch_threads or os.cpu_count() or 1)
    pipeline = PortraitPipeline(load_models())
    found = StyleCatalog(REPO / "styles").get(style)
    options = PortraitOptions(style=style, **FIELDS)
    generate(pipeline, [image], found, options)  # warm-up: LoRA load, first-call allocations

    def run() -> tuple[float, float]:
        start = time.perf_counter()
        timings = generate(pipeline, [image], found, options).timings
        return (time.perf_counter() - start) * 1000, sum(timings.values())

    return run


def post_style(url: str, image: bytes, style: str) -> float:
    return post_timed(url, image, style)[0]


def post_timed(url: str, image: bytes, style: str) -> tuple[float, float]:
    """One request's latency and the sum of its stage timings, in ms."""
    latency, body = post(url, image, {"style": style, **FIELDS})
    return latency, sum(body["timings"].values())


def medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6, help="sequential requests per latency figure")
    parser.add_argument("--concurrent-requests", type=int, default=24, help="requests sent by 8 clients")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.local.yaml")
    args = parser.parse_args()

    from serve_app.__main__ import sample_face

    image = sample_face()
    config = yaml.safe_load(args.config.read_text())
    port, app_args = config["http_options"]["port"], config["applications"][0]["args"]
    in_process = in_process_runner(image, "xmas-sweater", app_args.get("torch_threads"))

    with served(args.config, port) as url:
        for style in ("xmas-sweater", "film-noir"):
            post_style(url, image, style)  # warm-up, and both styles cached
        # Interleaved, so both see the same machine (the idle Ray processes cost the in-process runs too).
        same, local = [], []
        for _ in range(args.requests):
            same.append(post_timed(url, image, "xmas-sweater"))
            local.append(in_process())
        (local_ms, local_stages_ms), (http_ms, http_stages_ms) = medians(local), medians(same)
        switching = [post_style(url, image, style) for style in ("film-noir", "xmas-sweater") * (args.requests // 2)]
        switch_ms = statistics.median(switching)

        start = time.perf_counter()
        for _ in range(args.concurrent_requests // 4):
            post_style(url, image, "xmas-sweater")
        single_rps = (args.concurrent_requests // 4) / (time.perf_counter() - start)
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: post_style(url, image, "xmas-sweater"), range(args.concurrent_requests)))
        concurrent_rps = args.concurrent_requests / (time.perf_counter() - start)

    print(
        json.dumps(
            {
                "torch_threads": torch.get_num_threads(),
                "in_process_ms": round(local_ms, 1),
                "http_ms": round(http_ms, 1),
                "http_overhead_ratio": round(http_ms / local_ms, 3),
                "in_process_stages_ms": round(local_stages_ms, 1),
                "http_stages_ms": round(http_stages_ms, 1),
                "http_outside_stages_ms": round(http_ms - http_stages_ms, 1),
                "in_process_outside_stages_ms": round(local_ms - local_stages_ms, 1),
                "rps_1_client": round(single_rps, 3),
                "rps_8_clients": round(concurrent_rps, 3),
                "throughput_ratio": round(concurrent_rps / single_rps, 3),
                "same_style_ms": round(http_ms, 1),
                "switching_styles_ms": round(switch_ms, 1),
                "style_switch_cost": round((switch_ms - http_ms) / http_ms, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
