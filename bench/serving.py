"""What the service benchmarks share: start the service as the README does, and time one HTTP request."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def post(url: str, image: bytes, fields: dict) -> tuple[float, dict]:
    """One multipart request: its latency in ms and the response JSON."""
    start = time.perf_counter()
    response = httpx.post(url, files={"image": ("face.png", image)}, data=fields, timeout=600)
    response.raise_for_status()
    return (time.perf_counter() - start) * 1000, response.json()


@contextmanager
def served(config: Path, port: int, start_timeout_s: float = 300) -> Iterator[str]:
    """``serve run CONFIG`` exactly as the README starts the service; yields the portraits URL once every
    deployment is RUNNING; always shuts Serve and its Ray instance down."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.serve.scripts", "run", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
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
