"""End-to-end latency and throughput through the Serve graph, as production runs it:

- per request and per stage: p50 / p99 latency (ms) at concurrency 1, 4 and 8;
- throughput (portrait requests/s) at each concurrency.

Defaults are the production workload: N=4 candidates → K=2 portraits, 512² generated → 1024² (×2), 25 steps, on
the ``full-size`` profile (SD1.5, IP-Adapter-FaceID, ArcFace-sized ONNX, Real-ESRGAN x2plus, GFPGAN with seeded
random weights: production's cost without its weight files) and ``configs/serve.yaml``'s GPU layout. Goal on one
H100: p50 ≤ 2.0 s at concurrency 1.

    python bench/e2e.py --profile full-size                       # a GPU machine
    python bench/e2e.py --profile tiny --config configs/serve.local.yaml --size 128 --steps 12 --requests 4
    python bench/e2e.py --profile full-size --in-process [--compile]     # no Ray needed: 1 client

Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from serving import REPO, post, served, summary

STYLE = "xmas-sweater"


def styles_for(profile: str, folder: Path) -> Path:
    """The shipped styles, their LoRAs rewritten to fit SD1.5 off the tiny profile."""
    if profile == "tiny":
        return REPO / "styles"
    sys.path.insert(0, str(REPO / "scripts"))
    from make_demo_styles import write_demo_loras

    styles = Path(shutil.copytree(REPO / "styles", folder / "styles"))
    write_demo_loras(styles, profile)
    return styles


def bench_config(config: Path, profile: str, compile_unet: bool, folder: Path) -> Path:
    """``config`` with the profile (and compilation) switched and styles that fit the profile's base model."""
    data = yaml.safe_load(config.read_text())
    args = data["applications"][0]["args"]
    args.update(profile=profile, compile_unet=compile_unet, styles_dir=str(styles_for(profile, folder)))
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


Call = Callable[[], tuple[float, dict[str, float]]]
"""One request: its latency (ms) and its per-stage timings (ms)."""


def run_level(call: Call, concurrency: int, requests: int) -> dict:
    """``requests`` requests from ``concurrency`` clients: latency per request and per stage, throughput."""
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: call(), range(requests)))
    elapsed = time.perf_counter() - start
    stages: dict[str, list[float]] = {}
    for _, timings in results:
        for stage, ms in timings.items():
            stages.setdefault(stage, []).append(ms)
    return {
        "requests": requests,
        "request_ms": summary([latency for latency, _ in results]),
        "stage_ms": {stage: summary(values) for stage, values in stages.items()},
        "throughput_rps": round(requests / elapsed, 3),
    }


def in_process_call(profile: str, compile_unet: bool, styles: Path, image: bytes, fields: dict) -> Call:
    """The five stages in this process (no Ray: runs where only the model libraries are installed)."""
    from serve_app.pipeline.models import ModelSettings, load_models
    from serve_app.in_process import generate
    from serve_app.pipeline.portrait import PortraitPipeline
    from serve_app.schemas import PortraitOptions
    from serve_app.styles.catalog import StyleCatalog

    pipeline = PortraitPipeline(load_models(ModelSettings(profile=profile, compile_unet=compile_unet)))
    style, options = StyleCatalog(styles).get(fields["style"]), PortraitOptions(**fields)

    def call() -> tuple[float, dict[str, float]]:
        start = time.perf_counter()
        run = generate(pipeline, [image], style, options)
        return (time.perf_counter() - start) * 1000, run.timings

    return call


def http_call(url: str, image: bytes, fields: dict) -> Call:
    def call() -> tuple[float, dict[str, float]]:
        latency, response = post(url, image, fields)
        return latency, response["timings"]

    return call


def measure(call: Call, concurrency: list[int], requests: int) -> dict:
    for _ in range(2):  # warm-up: style load, first-call allocations (and compilation, when on)
        call()
    return {str(c): run_level(call, c, max(requests, c)) for c in concurrency}


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
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (styles hot-swapped)")
    parser.add_argument("--in-process", action="store_true", help="no Serve: the stages in this process, 1 client")
    args = parser.parse_args()

    from serve_app.__main__ import sample_face

    image = sample_face()
    fields = {"style": STYLE, "num_candidates": 4, "top_k": 2, "upscale": 2, "size": args.size, "steps": args.steps}
    memory: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        if args.in_process:
            call = in_process_call(args.profile, args.compile, styles_for(args.profile, Path(folder)), image, fields)
            levels = measure(call, [1], args.requests)
        else:
            config = bench_config(args.config, args.profile, args.compile, Path(folder))
            port = yaml.safe_load(config.read_text())["http_options"]["port"]
            with served(config, port, start_timeout_s=900) as url:
                levels = measure(http_call(url, image, fields | {"seed": 1}), args.concurrency, args.requests)
                memory = gpu_memory_by_deployment()
    result = {
        "profile": args.profile,
        "mode": "in_process" if args.in_process else "serve",
        "compile_unet": args.compile,
        "workload": fields | {"upscaled_side": 2 * args.size},
        "concurrency": levels,
        "gpu_memory_mib": memory,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
