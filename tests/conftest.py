from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serve_app.pipeline.models import Models, load_models
from serve_app.pipeline.settings import ModelSettings

# The browser tests' fixtures (Chromium, pages, screenshots), registered once for the whole session.
pytest_plugins = ["browser.chromium"]

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))  # the benchmarks' helpers, for the tests of what they measure
from group_quality import default_group_faces  # noqa: E402
INSIGHTFACE_IMAGES = Path(resources.files("insightface")) / "data" / "images"


def png_bytes(image: np.ndarray | Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def packaged_image(name: str) -> np.ndarray:
    """A real photo shipped inside the insightface package (Tom Hanks' 112² aligned face; t1.jpg, a group)."""
    return np.asarray(Image.open(INSIGHTFACE_IMAGES / name).convert("RGB"))


@pytest.fixture(scope="session")
def group_faces() -> list[bytes]:
    """Three different real people, one face each, as PNGs: the astronaut and two faces of insightface's group
    photo (dlib scores them 0.34-0.42 alike, far below the same-person 0.75); ``bench/group_quality.py``'s."""
    return list(default_group_faces(load_models().faces).values())


@pytest.fixture(scope="session")
def models() -> Models:
    return load_models()


@pytest.fixture(scope="session")
def commercial_models() -> Models:
    """The tiny-commercial profile: Plus-face identity on a tiny CLIP tower, the real MediaPipe and Open-NSFW."""
    return load_models(ModelSettings(profile="tiny-commercial"))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def astronaut_png(astronaut: np.ndarray) -> bytes:
    return png_bytes(astronaut)


@pytest.fixture(scope="session")
def styles_dir() -> Path:
    return REPO / "styles"


@pytest.fixture(scope="session")
def sample_face() -> bytes:
    from serve_app.sample import sample_face

    return sample_face()


def metric_total(metrics_url: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples with these labels (over replicas, say), as Ray's endpoint serves it now."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(metrics_url).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real Redis (Debian's redis-server) for the session, on a loopback port, nothing written to disk; always
    stopped."""
    server = shutil.which("redis-server")
    assert server, "install Debian's redis-server package (.ci/run does)"
    port = free_port()
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "redis-server did not start"
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=30)


ADMIN_TOKEN = "test-admin-token"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"the tests' webhook signing key!!").decode()


@pytest.fixture(scope="session")
def live_styles_dir(styles_dir: Path, tmp_path_factory) -> Path:
    """A copy of the shipped styles that the served app's curators may change."""
    copy = tmp_path_factory.mktemp("library") / "styles"
    shutil.copytree(styles_dir, copy)
    return copy


@pytest.fixture(scope="session")
def app_args(live_styles_dir: Path, tmp_path_factory) -> dict:
    return {
        "profile": "tiny",
        "styles_dir": str(live_styles_dir),
        "jobs_store": f"sqlite:///{tmp_path_factory.mktemp('jobs') / 'jobs.sqlite3'}",
        "job_results": str(tmp_path_factory.mktemp("job-results")),
        "job_lease_s": 5,
        "webhook_allowed_hosts": ["127.0.0.1"],  # the tests' receivers; plain http
        "webhook_retries_s": [0.5, 0.5, 0.5],
        "max_lora_bytes": 1024 * 1024,
        "max_lora_rank": 16,
        "max_image_bytes": 2 * 1024 * 1024,
        "max_in_flight": 8,
        # Cost units (serve_app.admission): the heaviest admissible request runs a few seconds here.
        "max_request_cost": 20,
        "max_cost_in_flight": 160,
        "max_batch_size": 8,
        "request_timeout_s": 240,
        "torch_threads": 1,  # as configs/serve.local.yaml: 2 cores shared by six replicas (no OpenMP oversubscription)
    }


@dataclass(frozen=True)
class RayCluster:
    metrics_url: str
    logs: Path
    s3_endpoint: str
    """Where the replicas' fsspec finds S3 (a test starts moto's server there: tests/reliability/test_styles_s3.py)."""


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One local Ray for the session, isolated in a temp folder, metrics on a loopback port; always shut down."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["STUDIO_ADMIN_TOKEN"] = ADMIN_TOKEN  # replicas inherit the environment Ray starts with
    os.environ["STUDIO_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    s3_endpoint = f"http://127.0.0.1:{free_port()}"
    os.environ.update({  # read by the replicas' fsspec and botocore; this process's fsspec read its config already
        "FSSPEC_S3_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
    })
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths have a length limit
    metrics_port = free_port()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=512 * 1024 * 1024,
        _temp_dir=temp_dir,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
        namespace="portrait-tests",
        log_to_driver=False,
    )
    try:
        logs = Path(temp_dir) / "session_latest" / "logs"
        yield RayCluster(metrics_url=f"http://127.0.0.1:{metrics_port}/metrics", logs=logs, s3_endpoint=s3_endpoint)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def metrics_url(ray_cluster: RayCluster) -> str:
    return ray_cluster.metrics_url


@pytest.fixture(scope="session")
def ray_logs(ray_cluster: RayCluster) -> Path:
    """Every log file the session's Ray, Serve and replicas write is under this folder."""
    return ray_cluster.logs


@pytest.fixture(scope="session")
def serve_url(ray_cluster: RayCluster, app_args: dict):
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(app_args), name="portraits", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
