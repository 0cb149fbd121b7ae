"""Asynchronous jobs through real HTTP on the cluster's store: a second application of the session's Ray
(``portraits-redis`` under ``/redis``) keeps its jobs in the session's real ``redis-server``. The job API as on
SQLite, one job from 50 racing submits with one key, the bounded queue (503 ``queue_full`` with ``Retry-After``),
the whole application restarted with jobs queued, an ingress replica SIGKILLed mid-job, and retention: nothing of
a job is left in Redis or in the results past it but its id's tombstone. The two applications share the style
library, as two ingress replicas do: what a curator does through one is seen by the other."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from curation import AUTH, manifest_yaml, publish
from reliability_kit import FAST, kill_replica, post_portrait, replicas, wait_until
from test_jobs import FIELDS, LONG, events_of, submit, waited

APP, PREFIX = "portraits-redis", "/redis"
RETENTION_S = 20
MAX_QUEUED = 3


def deploy(args: dict) -> None:
    from ray import serve

    from serve_app.app import build_app

    serve.run(build_app(args), name=APP, route_prefix=PREFIX)


@pytest.fixture(scope="module")
def redis_app_args(app_args: dict, redis_url: str, tmp_path_factory) -> dict:
    return {
        **app_args,
        "jobs_store": redis_url,
        "job_results": str(tmp_path_factory.mktemp("redis-job-results")),
        "job_retention_s": RETENTION_S,
        "max_queued_jobs": MAX_QUEUED,
        "max_in_flight": 2,
    }


@pytest.fixture(scope="module")
def root(serve_url: str, redis_app_args: dict) -> Iterator[str]:
    """The service's root URL; the Redis application answers under ``PREFIX`` (its job Locations include it)."""
    from ray import serve

    deploy(redis_app_args)
    try:
        yield serve_url
    finally:
        serve.delete(APP)


@pytest.fixture
def api(root: str) -> str:
    return root + PREFIX


def ended(root: str, job_id: str) -> bool:
    try:
        status = httpx.get(f"{root}{PREFIX}/v1/jobs/{job_id}", timeout=30).json()["status"]
    except (httpx.HTTPError, ValueError, KeyError):  # no ingress for a moment
        return False
    return status in ("succeeded", "failed", "canceled")


def gallery(api: str) -> list[str]:
    return [style["versioned_id"] for style in httpx.get(f"{api}/v1/styles", timeout=30).json()]


def test_a_style_published_through_one_ingress_is_served_by_the_other(root, api, sample_face, styles_dir: Path):
    """Published, given a new default version and retired through the first application: the second's gallery
    and portrait requests follow within its styles_refresh_s (0.5 s) and one refresh; waited for here, not timed."""
    lora = (styles_dir / "film-noir" / "lora.safetensors").read_bytes()
    for version in (1, 2):
        assert publish(root, manifest_yaml("fresh-everywhere"), lora).status_code == 201
        wait_until(lambda: f"fresh-everywhere@{version}" in gallery(api), within_s=10, every_s=0.05)
        files, data = {"image": ("face.png", sample_face)}, {**FAST, "style": "fresh-everywhere"}
        answer = httpx.post(f"{api}/v1/portraits", files=files, data=data, timeout=120)
        assert answer.status_code == 200 and answer.json()["style"] == f"fresh-everywhere@{version}"  # stages read it
    changed = httpx.patch(f"{root}/admin/styles/fresh-everywhere", json={"default_version": 1}, headers=AUTH)
    assert changed.status_code == 200
    wait_until(lambda: "fresh-everywhere@1" in gallery(api), within_s=10, every_s=0.05)
    assert httpx.delete(f"{root}/admin/styles/fresh-everywhere", headers=AUTH).status_code == 200
    wait_until(lambda: post_portrait(api, sample_face, {"style": "fresh-everywhere"}).code == "style_retired", 10, 0.05)
    assert post_portrait(api, sample_face, {"style": "fresh-everywhere"}).status == 410


def test_a_job_runs_to_its_result_and_its_events_on_redis(root, api, sample_face):
    submitted = submit(api, sample_face, FIELDS)
    assert submitted.status_code == 202
    assert submitted.headers["location"] == f"{PREFIX}/v1/jobs/{submitted.json()['id']}"
    done = waited(root, submitted.headers["location"])
    assert done["status"] == "succeeded" and done["result"]["seed"] == 17 and done["result"]["images"]
    events = events_of(api, done["id"])
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1)) and events[-1][2] == done["result"]
    assert events_of(api, done["id"], **{"last-event-id": str(len(events) - 1)}) == events[-1:]


def test_fifty_racing_submits_with_one_key_make_one_job_on_redis(root, api, sample_face):
    key = {"idempotency-key": f"redis-race-{time.time()}"}
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: submit(api, sample_face, {**FIELDS, "seed": "51"}, **key), range(50)))
    assert sorted(a.status_code for a in answers) == [200] * 49 + [202]
    assert len({a.json()["id"] for a in answers}) == 1
    waited(root, answers[0].headers["location"])


def test_past_the_bounded_queue_submits_get_503_queue_full_and_nothing_else(root, api, sample_face):
    """Two long jobs take the two places ``max_in_flight`` gives; ``MAX_QUEUED`` more wait; one more is refused."""
    running = [submit(api, sample_face, {**LONG, "seed": str(60 + i)}).json()["id"] for i in range(2)]
    wait_until(lambda: all(httpx.get(f"{api}/v1/jobs/{i}", timeout=30).json()["status"] == "running"
                           for i in running), 60, every_s=0.2)
    queued = [submit(api, sample_face, {**FIELDS, "seed": str(70 + i)}) for i in range(MAX_QUEUED)]
    assert [q.status_code for q in queued] == [202] * MAX_QUEUED
    assert [q.json()["queue_position"] for q in queued] == [1, 2, 3]
    refused = submit(api, sample_face, {**FIELDS, "seed": "79"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) > 0
    for job_id in running:
        httpx.post(f"{api}/v1/jobs/{job_id}/cancel", timeout=30)
    assert [waited(root, q.headers["location"])["status"] for q in queued] == ["succeeded"] * MAX_QUEUED


def test_the_application_restarted_with_jobs_queued_runs_them(root, api, sample_face, redis_app_args):
    from ray import serve

    jobs = [submit(api, sample_face, {**FIELDS, "seed": str(80 + i), "steps": "40"}).json()["id"]
            for i in range(MAX_QUEUED)]
    serve.delete(APP)  # the whole application stops: its runners leave the jobs queued or leased
    deploy(redis_app_args)
    wait_until(lambda: all(ended(root, job_id) for job_id in jobs), 180)
    assert [httpx.get(f"{api}/v1/jobs/{job_id}", timeout=30).json()["status"] for job_id in jobs] == [
        "succeeded"] * MAX_QUEUED


def test_a_job_whose_ingress_replica_dies_mid_run_succeeds_on_redis(root, api, sample_face):
    job = submit(api, sample_face, {**LONG, "seed": "90"}).json()
    wait_until(lambda: (httpx.get(f"{api}/v1/jobs/{job['id']}", timeout=30).json()["progress"] or {})
               .get("step") is not None, 60, every_s=0.1)
    killed = kill_replica("PortraitIngress", APP)
    wait_until(lambda: killed not in replicas(APP).get("PortraitIngress", set()), 30)
    wait_until(lambda: ended(root, job["id"]), 120)
    done = httpx.get(f"{api}/v1/jobs/{job['id']}", timeout=30).json()
    assert done["status"] == "succeeded" and {i["seed"] for i in done["result"]["images"]} <= {90, 91}


def test_past_its_retention_nothing_of_a_job_is_left_but_a_tombstone(root, api, sample_face, redis_url,
                                                                     redis_app_args):
    done = waited(root, submit(api, sample_face, {**FIELDS, "seed": "95"}).headers["location"])
    results = Path(redis_app_args["job_results"]) / done["id"]
    assert results.is_dir()
    wait_until(lambda: httpx.get(f"{api}/v1/jobs/{done['id']}", timeout=30).status_code == 410,
               RETENTION_S + 30)
    gone = httpx.get(f"{api}/v1/jobs/{done['id']}", timeout=30).json()
    assert gone["error"]["code"] == "job_expired"
    store = redis.Redis.from_url(redis_url)
    left = {key.decode() for key in store.keys(f"*{done['id']}*")}
    assert left == {f"portrait-studio:job:{done['id']}"}
    assert set(store.hgetall(f"portrait-studio:job:{done['id']}")) == {
        b"id", b"status", b"request", b"fingerprint", b"created_at", b"expires_at", b"attempts",
        b"cancel_requested"}
    assert store.hget(f"portrait-studio:job:{done['id']}", "request") == b"{}"
    assert not results.exists()
