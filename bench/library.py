"""The style library at scale: a library of ``--count`` styles × ``--versions`` versions (made by
``scripts/make_demo_styles.py``), on a local folder and on S3 (moto's server, in its own process on loopback), and
what the catalogue costs there:

- ``startup_s``: an ingress replica's catalogue coming up (``StyleCatalog``: the whole library's manifests), and a
  diffusion stage's (``StyleStore`` and one version, what a stage reads before it loads a LoRA).
- ``gallery_ms``: ``GET /v1/styles`` p50 through the real route (the styles router in-process, over ASGI: no Serve
  proxy hop, about 5 ms more in the service); ``list_ms``: ``StyleCatalog.list()`` alone.
- ``get_ms``: ``StyleCatalog.get`` of random styles, what a portrait request pays the catalogue (p50, p99).
- ``staleness_s``: from a publish, a retirement or a new default version returning on one catalogue until another
  catalogue over the same store (following its changes, as an ingress replica does) shows it: max and median of
  ``--changes`` of each kind. ``go_live_late_s``: how long after its ``available_from`` a scheduled style becomes
  usable there, with no write at that time.
- ``lora`` (``--lora``): the LoRA cache under skewed load through the service (``bench/lora_routing.py``).

    python bench/library.py [--count 50 --versions 5] [--stores local s3] [--calls 30] [--changes 5] [--lora]

Runs against whatever ``StyleCatalog`` the checkout has, so the same command gives the before figures on an older
commit. Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import fsspec
import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts"), str(REPO / "bench")]

from make_demo_styles import make_library  # noqa: E402
from serving import percentile  # noqa: E402

from serve_app.api import styles as styles_api  # noqa: E402
from serve_app.styles.catalog import StyleCatalog  # noqa: E402
from serve_app.styles.manifest import StyleManifest  # noqa: E402

BUCKET = "portrait-library"
REFRESH_S = 0.5  # the service's default styles_refresh_s
# The service's catalogue follows the library's changes; an older one read storage on every call.
FOLLOWING = {"refresh_s": REFRESH_S} if "refresh_s" in inspect.signature(StyleCatalog).parameters else {}


def stage_reader(location: str) -> Callable[[str], object]:
    """What a diffusion stage builds at start-up to find a version's LoRA: ``version(id@n)``."""
    try:
        from serve_app.styles.store import StyleStore
    except ImportError:  # before the store: the stage built a whole catalogue
        return StyleCatalog(location).version
    return StyleStore(location).version


@contextmanager
def moto_server() -> Iterator[str]:
    """S3 on loopback in its own process (so its work does not share this process's interpreter lock)."""
    port = 20000 + os.getpid() % 20000
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(endpoint, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
        fsspec.filesystem("s3").mkdir(BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def milliseconds(calls: list[Callable[[], object]]) -> dict[str, float]:
    times = []
    for call in calls:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return {"p50": round(statistics.median(times), 2), "p99": round(percentile(times, 99), 2)}


def gallery(catalog: StyleCatalog) -> TestClient:
    """The real ``GET /v1/styles`` route over ASGI, with the catalogue as its only service."""
    app = FastAPI()
    app.include_router(styles_api.router)
    app.state.services = SimpleNamespace(catalog=catalog)
    return TestClient(app)


def wait_until(condition: Callable[[], bool], timeout_s: float = 120) -> float:
    """Seconds until ``condition()`` held, polling every 5 ms."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the change was not seen")
        time.sleep(0.005)
    return time.monotonic() - start


def serves(catalog: StyleCatalog, ref: str, versioned_id: str | None = None) -> bool:
    try:
        found = catalog.get(ref)
    except Exception:  # not usable there (yet)
        return False
    return versioned_id is None or found.versioned_id == versioned_id


def refused(catalog: StyleCatalog, ref: str) -> bool:
    return not serves(catalog, ref)


def staleness(writer: StyleCatalog, reader: StyleCatalog, ids: list[str], changes: int) -> dict:
    """Seconds from a change returning on ``writer`` until ``reader`` shows it, by kind of change."""
    lora = writer.get(ids[0]).read_lora()
    seen: dict[str, list[float]] = {"publish": [], "retire": [], "default_version": []}
    for style_id in ids[1: changes + 1]:
        manifest = StyleManifest(id=style_id, title=f"{style_id} again", prompt_template="{subject}, bench")
        published = writer.publish(manifest, lora)
        seen["publish"].append(wait_until(lambda: serves(reader, style_id, published.versioned_id)))
        writer.update_state(style_id, default_version=1)
        seen["default_version"].append(wait_until(lambda: serves(reader, style_id, f"{style_id}@1")))
        writer.update_state(style_id, retired=True)
        seen["retire"].append(wait_until(lambda: refused(reader, style_id)))
    figures = {kind: {"max": round(max(v), 3), "p50": round(statistics.median(v), 3)} for kind, v in seen.items()}
    figures["go_live_late_s"] = go_live_late(writer, reader, ids[-1])
    return figures


def go_live_late(writer: StyleCatalog, reader: StyleCatalog, style_id: str) -> float:
    """A style scheduled 3 s ahead: how long after that time ``reader`` serves it (no write at that time)."""
    live_at = datetime.now(UTC) + timedelta(seconds=3)
    writer.update_state(style_id, available_from=live_at)
    wait_until(lambda: refused(reader, style_id))
    wait_until(lambda: serves(reader, style_id))
    return round((datetime.now(UTC) - live_at).total_seconds(), 3)


def measure(location: str, ids: list[str], calls: int, changes: int) -> dict:
    start = time.perf_counter()
    reader = StyleCatalog(location, **FOLLOWING)
    ingress_s = time.perf_counter() - start
    start = time.perf_counter()
    stage_reader(location)(f"{ids[0]}@1")
    stage_s = time.perf_counter() - start
    client, rng = gallery(reader), random.Random(0)
    assert len(client.get("/v1/styles").json()) == len(ids)
    figures = {
        "startup_s": {"ingress": round(ingress_s, 3), "stage": round(stage_s, 3)},
        "gallery_ms": milliseconds([lambda: client.get("/v1/styles").raise_for_status()] * calls),
        "list_ms": milliseconds([reader.list] * calls),
        "get_ms": milliseconds([lambda: reader.get(rng.choice(ids))] * calls),
        "staleness_s": staleness(StyleCatalog(location), reader, ids, changes),
    }
    if hasattr(reader, "close"):
        reader.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--stores", nargs="+", choices=("local", "s3"), default=["local", "s3"])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--changes", type=int, default=5, help="changes of each kind for the staleness figures")
    parser.add_argument("--lora", action="store_true", help="also the LoRA cache through the service")
    args = parser.parse_args()
    result: dict = {"library": {"styles": args.count, "versions": args.versions}, "catalogue": {}}
    with tempfile.TemporaryDirectory(prefix="library-bench-") as folder:
        ids = make_library(Path(folder) / "styles", args.count, args.versions)
        if "local" in args.stores:
            local = Path(folder) / "local"
            fsspec.filesystem("file").put(str(Path(folder) / "styles"), str(local), recursive=True)
            result["catalogue"]["local"] = measure(str(local), ids, args.calls, args.changes)
            print(json.dumps({"local": result["catalogue"]["local"]}), flush=True)
        if "s3" in args.stores:
            with moto_server():
                url = f"s3://{BUCKET}/styles"
                fsspec.filesystem("s3").put(str(Path(folder) / "styles"), url, recursive=True)
                result["catalogue"]["s3"] = measure(url, ids, args.calls, args.changes)
                print(json.dumps({"s3": result["catalogue"]["s3"]}), flush=True)
    if args.lora:
        from lora_routing import run as lora_run

        result["lora"] = lora_run()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
