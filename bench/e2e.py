"""End-to-end latency and throughput through the Serve graph, as production runs it:

- per request and per stage: p50 / p99 latency (ms) at concurrency 1, 4 and 8;
- throughput (portrait requests/s) at each concurrency.

Defaults are the production workload: N=4 candidates → K=2 portraits, 512² generated → 1024² (×2), 25 steps, on
the ``full-size`` profile (SD1.5, IP-Adapter-FaceID, ArcFace-sized ONNX, Real-ESRGAN x2plus, GFPGAN with seeded
random weights: production's cost without its weight files) and ``configs/serve.yaml``'s GPU layout. Goal on one
H100: p50 ≤ 2.0 s at concurrency 1.

    python bench/e2e.py --profile full-size                       # a GPU machine
    python bench/e2e.py --profile tiny --config configs/serve.local.yaml --size 128 --steps 12 --requests 4

Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from serving import REPO, post, served

STYLE = "xmas-sweater"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p99": round(percentile(values, 99), 1)}


def bench_config(config: Path, profile: str, folder: Path) -> Path:
    """``config`` with the profile switched and, off the tiny profile, demo styles whose LoRAs fit SD1.5."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_demo_styles import write_demo_loras

    data = yaml.safe_load(config.read_text())
    args = data["applications"][0]["args"]
    args["profile"] = profile
    if profile != "tiny":
        styles = Path(shutil.copytree(REPO / "styles", folder / "styles"))
        write_demo_loras(styles, profile)
        args["styles_dir"] = str(styles)
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_level(url: str, image: bytes, fields: dict, concurrency: int, requests: int) -> dict:
    """``requests`` requests from ``concurrency`` clients: latency per request and per stage, throughput."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: post(url, image, fields), range(requests)))
    elapsed = time.perf_counter() - start
    stages: dict[str, list[float]] = {}
    for _, response in results:
        for stage, ms in response["timings"].items():
            stages.setdefault(stage, []).append(ms)
    return {
        "requests": requests,
        "request_ms": summary([latency for latency, _ in results]),
        "stage_ms": {stage: summary(values) for stage, values in stages.items()},
        "throughput_rps": round(requests / elapsed, 3),
    }


def gpu_memory_by_deployment() -> dict[str, int]:
    """MiB of GPU memory each Serve replica process holds (nvidia-smi), summed per deployment; {} without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return {}
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    usage: dict[str, int] = {}
    for line in subprocess.run(query, capture_output=True, text=True, check=False).stdout.splitlines():
        pid, mib = (field.strip() for field in line.split(","))
        title = subprocess.run(["ps", "-o", "args=", "-p", pid], capture_output=True, text=True, check=False).stdout
        match = re.search(r"ServeReplica:[^:\s]+:(\w+)", title)
        name = match.group(1) if match else title.strip()[:40] or pid
        usage[name] = usage.get(name, 0) + int(mib)
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="full-size", choices=("tiny", "full-size", "production"))
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.yaml")
    parser.add_argument("--size", type=int, default=512, help="generated side (upscaled ×2)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()

    from serve_app.__main__ import sample_face

    image = sample_face()
    fields = {
        "style": STYLE,
        "num_candidates": 4,
        "top_k": 2,
        "upscale": 2,
        "size": args.size,
        "steps": args.steps,
        "seed": 1,
    }
    with tempfile.TemporaryDirectory() as folder:
        config = bench_config(args.config, args.profile, Path(folder))
        port = yaml.safe_load(config.read_text())["http_options"]["port"]
        with served(config, port, start_timeout_s=900) as url:
            for _ in range(2):  # warm-up: style load, first-call allocations (and compilation, when on)
                post(url, image, fields)
            levels = {str(c): run_level(url, image, fields, c, max(args.requests, c)) for c in args.concurrency}
    print(
        json.dumps(
            {"profile": args.profile, "workload": fields | {"upscaled_side": 2 * args.size}, "concurrency": levels}
        )
    )


if __name__ == "__main__":
    main()
