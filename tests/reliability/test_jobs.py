"""Asynchronous jobs through real HTTP on the session's app (SQLite store): submit (``POST /v1/jobs`` and ``Prefer:
respond-async``), follow (``Prefer: wait``, events with ids and ``Last-Event-ID``), the result equal to the
synchronous call's, idempotency keys, cancel of a running job (its stages stop stepping), the refusals, and a job
whose ingress replica is killed mid-run, taken over by the replica Serve starts instead."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import metric_total
from numerics import assert_images_close
from PIL import Image
from reliability_kit import kill_replica, replicas, wait_until

pytestmark = pytest.mark.usefixtures("serve_url")
FIELDS = {"style": "film-noir", "num_candidates": "2", "top_k": "1", "seed": "17", "steps": "6", "size": "64",
          "upscale": "1"}
LONG = {**FIELDS, "seed": "18", "steps": "150", "size": "128"}


def submit(url: str, face: bytes, fields: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", files={"image": ("face.png", face)}, data=fields, headers=headers, timeout=60)


def waited(url: str, location: str) -> dict:
    """The job once it ended (``Prefer: wait``, asked again until it has)."""
    for _ in range(10):
        job = httpx.get(f"{url}{location}", headers={"prefer": "wait=30"}, timeout=60).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
    raise TimeoutError(job)


def images(document: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(i["image_base64"])))) for i in document["images"]]


def events_of(url: str, job_id: str, **headers: str) -> list[tuple[int, str, dict]]:
    found = []
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=120) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for block in stream.read().decode().strip().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            found.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return found


def test_a_job_runs_to_the_result_the_synchronous_call_gives(serve_url, sample_face):
    submitted = submit(serve_url, sample_face, FIELDS)
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()
    assert submitted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] in ("queued", "running") and job["result"] is None and job["created_at"]
    done = waited(serve_url, submitted.headers["location"])
    assert done["status"] == "succeeded" and done["error"] is None and done["expires_at"] > done["finished_at"]
    synchronous = httpx.post(f"{serve_url}/v1/portraits", files={"image": ("face.png", sample_face)}, data=FIELDS,
                             timeout=120).json()
    assert done["result"]["seed"] == synchronous["seed"] == 17 and done["result"]["style"] == synchronous["style"]
    assert [i["seed"] for i in done["result"]["images"]] == [i["seed"] for i in synchronous["images"]]
    # the same request alone in both cases; the tolerance of tests/numerics.py all the same
    assert_images_close(images(done["result"]), images(synchronous))

    events = events_of(serve_url, job["id"])
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert events[0][1:] == ("stage_started", {"stage": "preprocess"}) and events[-1][1] == "result"
    assert events[-1][2] == done["result"]
    resumed = events_of(serve_url, job["id"], **{"last-event-id": str(len(events) - 2)})
    assert resumed == events[-2:]


def test_the_store_keeps_no_input_image_once_a_job_ended_and_its_portraits_in_the_results(
    serve_url, sample_face, app_args
):
    done = waited(serve_url, submit(serve_url, sample_face, {**FIELDS, "seed": "21"}).headers["location"])
    with sqlite3.connect(app_args["jobs_store"].removeprefix("sqlite:///")) as store:
        image, result = store.execute("SELECT image, result FROM jobs WHERE id = ?", (done["id"],)).fetchone()
    assert image is None
    recorded, = json.loads(result)["images"]  # the record names the portrait's file, and holds no image
    assert recorded["files"] == {"image_base64": "0.png"} and "image_base64" not in recorded
    kept = sorted(path.name for path in (Path(app_args["job_results"]) / done["id"]).iterdir())
    assert kept == ["0.png"]
    assert (Path(app_args["job_results"]) / done["id"] / "0.png").read_bytes() == base64.b64decode(
        done["result"]["images"][0]["image_base64"]
    )


def test_prefer_respond_async_on_the_synchronous_route_queues_a_job(serve_url, sample_face):
    response = httpx.post(f"{serve_url}/v1/portraits", files={"image": ("face.png", sample_face)},
                          data={**FIELDS, "seed": "19"}, headers={"prefer": "respond-async"}, timeout=60)
    assert response.status_code == 202 and response.headers["location"].startswith("/v1/jobs/")
    assert waited(serve_url, response.headers["location"])["status"] == "succeeded"


def test_one_idempotency_key_makes_one_job_even_when_submits_race(serve_url, sample_face):
    key = {"idempotency-key": f"race-{time.time()}"}
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: submit(serve_url, sample_face, {**FIELDS, "seed": "23"}, **key), range(50)))
    assert sorted(a.status_code for a in answers) == [200] * 49 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    other_body = submit(serve_url, sample_face, {**FIELDS, "seed": "24"}, **key)
    assert other_body.status_code == 422 and other_body.json()["error"]["code"] == "idempotency_key_reused"
    waited(serve_url, answers[0].headers["location"])


def test_cancel_of_a_running_job_stops_its_stages(serve_url, metrics_url, sample_face):
    job = submit(serve_url, sample_face, LONG).json()
    deadline = time.monotonic() + 60
    while httpx.get(f"{serve_url}/v1/jobs/{job['id']}", timeout=30).json()["progress"] is None:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.25)
    canceled = httpx.post(f"{serve_url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert canceled.status_code == 202
    done = waited(serve_url, f"/v1/jobs/{job['id']}")
    assert done["status"] == "canceled" and done["error"]["error"]["code"] == "job_canceled"
    # the stages stopped: the blend sampler's step counter settles far below the 98 steps of this job's blend
    steps = [metric_total(metrics_url, "ray_portrait_denoising_steps_total", stage="blend")]
    while len(steps) < 4 or steps[-1] != steps[-4]:  # unchanged for 3 s (metrics export every second here)
        assert len(steps) < 60, steps
        time.sleep(1)
        steps.append(metric_total(metrics_url, "ray_portrait_denoising_steps_total", stage="blend"))
    assert metric_total(metrics_url, "ray_portrait_jobs_total", outcome="canceled") >= 1
    assert events_of(serve_url, job["id"])[-1][1] == "error"
    again = httpx.post(f"{serve_url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_unknown_jobs_and_requests_over_the_cost_ceiling_are_refused(serve_url, sample_face):
    for method, path in (("GET", "/v1/jobs/nope"), ("GET", "/v1/jobs/nope/events"), ("POST", "/v1/jobs/nope/cancel")):
        response = httpx.request(method, f"{serve_url}{path}", timeout=30)
        assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"
    heavy = submit(serve_url, sample_face, {**FIELDS, "num_candidates": "8", "size": "2048", "steps": "150"})
    assert heavy.status_code == 422 and heavy.json()["error"]["code"] == "request_too_costly"
    no_face = submit(serve_url, b"not an image", FIELDS)
    assert no_face.status_code == 202  # the image is checked when the job runs, as the synchronous call does it
    failed = waited(serve_url, no_face.headers["location"])
    assert failed["status"] == "failed" and failed["error"]["error"]["code"] == "invalid_image"


def test_a_job_whose_ingress_replica_dies_mid_run_is_taken_over_and_succeeds(serve_url, sample_face):
    """The replica running the job is SIGKILLed while the job samples; Serve starts another, whose runner takes
    the job over once its lease (5 s here) runs out, and runs it again with its seed."""
    job = submit(serve_url, sample_face, {**LONG, "seed": "29"}).json()  # seconds of sampling: a step to catch
    wait_until(lambda: (httpx.get(f"{serve_url}/v1/jobs/{job['id']}", timeout=30).json()["progress"] or {})
               .get("step") is not None, 60, every_s=0.1)
    killed = kill_replica("PortraitIngress")
    wait_until(lambda: killed not in replicas().get("PortraitIngress", set()), 30)

    def ended() -> bool:
        try:
            status = httpx.get(f"{serve_url}/v1/jobs/{job['id']}", timeout=30).json()["status"]
        except (httpx.HTTPError, ValueError):  # the proxy has no ingress for a moment
            return False
        return status in ("succeeded", "failed", "canceled")

    wait_until(ended, 120)
    done = httpx.get(f"{serve_url}/v1/jobs/{job['id']}", timeout=30).json()
    assert done["status"] == "succeeded" and done["result"]["seed"] == 29
    assert {i["seed"] for i in done["result"]["images"]} <= {29, 30}
    assert [name for _, name, _ in events_of(serve_url, job["id"])].count("stage_started") >= 6  # run twice
