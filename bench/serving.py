"""What the service benchmarks share: start the service as the README does, time one HTTP request, and sum
latencies up as percentiles."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
ORDINARY = {"style": "xmas-sweater", "num_candidates": 2, "top_k": 1, "upscale": 2, "size": 128, "steps": 8, "seed": 1}
"""An ordinary request of the tiny profile: what the benchmarks of clients' behaviour measure the service by."""


def timed_post(
    url: str, image: bytes, fields: dict, client: httpx.Client | None = None
) -> tuple[float, httpx.Response]:
    """One multipart request, whatever its status: its latency in ms and the response."""
    start = time.perf_counter()
    response = (client or httpx).post(url, files={"image": ("face.png", image)}, data=fields, timeout=600)
    return (time.perf_counter() - start) * 1000, response


def post(url: str, image: bytes, fields: dict) -> tuple[float, dict]:
    """One multipart request: its latency in ms and the response JSON."""
    latency, response = timed_post(url, image, fields)
    response.raise_for_status()
    return latency, response.json()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 1), "p99": round(percentile(values, 99), 1)}


@contextmanager
def served(config: Path, port: int, start_timeout_s: float = 300, metrics_port: int = 8080) -> Iterator[str]:
    """``scripts/serve_run.py CONFIG`` (``serve run`` with Ray's metrics on ``metrics_port``) as the README starts
    the service; yields the portraits URL once every deployment is RUNNING; always shuts Serve and its Ray
    instance down."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, str(REPO / "scripts" / "serve_run.py"), "--metrics-export-port", str(metrics_port)]
    process = subprocess.Popen(
        [*command, str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # Ctrl-C must reach it even when this bench runs in the background of a script (SIGINT ignored there).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            status = subprocess.run(
                [sys.executable, "-m", "ray.serve.scripts", "status"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if re.search(r"^    status: RUNNING", status, re.MULTILINE):
                break
            if process.poll() is not None:
                raise RuntimeError(f"serve run exited with {process.returncode}; run it by hand to see why")
            time.sleep(2)
        else:
            raise TimeoutError(f"the app did not reach RUNNING in {start_timeout_s} s")
        yield f"http://127.0.0.1:{port}/v1/portraits"
    finally:
        os.killpg(process.pid, signal.SIGINT)  # serve run shuts the app and its Ray instance down on Ctrl-C
        process.wait(timeout=120)
