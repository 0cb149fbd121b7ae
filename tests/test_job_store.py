"""The job stores' contract (``serve_app.jobs.store.JobStore``), each store held to the same tests: submits with
idempotency keys and a bounded queue, claims with leases that another replica takes over, events, outcomes,
cancels, retention, and a restart that loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from serve_app.jobs.records import IdempotencyKeyReusedError, JobStatus, NewJob, QueueFullError
from serve_app.jobs.store import JobStore, open_job_store

LEASE_S = 30.0
RETENTION_S = 3600.0
TOMBSTONE_S = 86400.0
CANCELED = {"error": {"code": "job_canceled", "message": "the job was canceled"}}


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path: Path) -> str:
    """An empty store of each kind: a new SQLite file, or the session's Redis emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    import redis

    url = request.getfixturevalue("redis_url")
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


@pytest_asyncio.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    opened = open_job_store(store_url)
    yield opened
    await opened.close()


def job(seed: int = 1, key: str | None = None, image: bytes = b"\x89PNG image") -> NewJob:
    return NewJob(request={"style": "film-noir", "seed": seed}, fingerprint=f"body-{seed}", image=image,
                  idempotency_key=key)


@pytest.mark.asyncio
async def test_a_submitted_job_is_queued_with_its_image_in_order(store):
    first, created = await store.submit(job(1), max_queued=10, now=100.0)
    second, _ = await store.submit(job(2), max_queued=10, now=101.0)
    assert created and first.status == JobStatus.QUEUED and first.request == {"style": "film-noir", "seed": 1}
    assert first.created_at == 100.0 and first.started_at is None and first.expires_at is None
    assert (await store.get(first.id)) == first
    assert (await store.image(first.id)) == b"\x89PNG image"
    assert [(await store.queue_position(j.id)) for j in (first, second)] == [1, 2]
    assert (await store.get("no-such-job")) is None


@pytest.mark.asyncio
async def test_the_queue_is_bounded(store):
    for seed in range(3):
        await store.submit(job(seed), max_queued=3, now=100.0 + seed)
    with pytest.raises(QueueFullError):
        await store.submit(job(9), max_queued=3, now=110.0)
    await store.claim("replica-a", LEASE_S, now=111.0)  # a running job leaves room in the queue
    assert (await store.submit(job(9), max_queued=3, now=112.0))[1]


@pytest.mark.asyncio
async def test_an_idempotency_key_makes_one_job_for_one_body_and_refuses_another(store):
    made, created = await store.submit(job(1, key="k1"), max_queued=10, now=100.0)
    again, created_again = await store.submit(job(1, key="k1"), max_queued=10, now=101.0)
    assert created and not created_again and again.id == made.id
    with pytest.raises(IdempotencyKeyReusedError):
        await store.submit(job(2, key="k1"), max_queued=10, now=102.0)


@pytest.mark.asyncio
async def test_racing_submits_with_one_key_from_two_replicas_make_one_job(store, store_url):
    other_replica = open_job_store(store_url)

    submits = [(store if i % 2 else other_replica).submit(job(1, key="race"), 100, 100.0 + i) for i in range(50)]
    try:
        answers = await asyncio.gather(*submits)
    finally:
        await other_replica.close()
    assert len({record.id for record, _ in answers}) == 1
    assert sum(created for _, created in answers) == 1


@pytest.mark.asyncio
async def test_claims_take_the_oldest_job_and_a_dead_replicas_job_is_taken_over(store):
    older, _ = await store.submit(job(1), 10, now=100.0)
    newer, _ = await store.submit(job(2), 10, now=101.0)
    taken = await store.claim("replica-a", LEASE_S, now=102.0)
    assert taken.id == older.id and taken.status == JobStatus.RUNNING and taken.owner == "replica-a"
    assert taken.started_at == 102.0 and taken.lease_until == 102.0 + LEASE_S and taken.attempts == 1
    assert (await store.queue_position(newer.id)) == 1 and (await store.queue_position(older.id)) is None
    assert (await store.claim("replica-b", LEASE_S, now=103.0)).id == newer.id
    assert (await store.claim("replica-b", LEASE_S, now=104.0)) is None  # nothing queued, every lease alive
    assert (await store.renew(older.id, "replica-a", LEASE_S, now=120.0))
    # replica-a dies: its lease runs out, replica-b takes the job over
    taken_over = await store.claim("replica-b", LEASE_S, now=120.0 + LEASE_S + 1)
    assert taken_over.id == older.id and taken_over.owner == "replica-b" and taken_over.attempts == 2
    assert taken_over.started_at == 102.0
    assert not (await store.renew(older.id, "replica-a", LEASE_S, now=160.0))
    assert not (await store.finish(older.id, "replica-a", JobStatus.SUCCEEDED, 160.0, RETENTION_S, result={"a": 1}))
    assert (await store.get(older.id)).owner == "replica-b"


@pytest.mark.asyncio
async def test_an_outcome_is_kept_until_its_retention_and_the_input_image_goes_at_once(store):
    submitted, _ = await store.submit(job(1), 10, now=100.0)
    await store.claim("replica-a", LEASE_S, now=101.0)
    assert (await store.finish(submitted.id, "replica-a", JobStatus.SUCCEEDED, 110.0, RETENTION_S, result={"seed": 1}))
    done = await store.get(submitted.id)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"seed": 1} and done.error is None
    assert done.finished_at == 110.0 and done.expires_at == 110.0 + RETENTION_S and done.owner is None
    assert (await store.image(submitted.id)) is None
    with pytest.raises(ValueError):
        await store.finish(submitted.id, "replica-a", JobStatus.RUNNING, 111.0, RETENTION_S)


@pytest.mark.asyncio
async def test_events_are_numbered_and_read_from_where_a_client_left(store):
    submitted, _ = await store.submit(job(1), 10, now=100.0)
    for step in (1, 2, 3):
        await store.add_event(submitted.id, "step", {"stage": "blend", "step": step, "total": 3})
    assert [event.seq for event in (await store.events(submitted.id))] == [1, 2, 3]
    assert [event.data["step"] for event in (await store.events(submitted.id, after=1))] == [2, 3]
    assert (await store.events("no-such-job")) == []


@pytest.mark.asyncio
async def test_cancel_stops_a_queued_job_marks_a_running_one_and_leaves_a_finished_one(store):
    queued, _ = await store.submit(job(1), 10, now=100.0)
    canceled = await store.cancel(queued.id, now=101.0, retention_s=RETENTION_S, error=CANCELED)
    assert canceled.status == JobStatus.CANCELED and canceled.expires_at == 101.0 + RETENTION_S
    assert canceled.error == CANCELED
    assert (await store.image(queued.id)) is None and (await store.claim("replica-a", LEASE_S, now=102.0)) is None

    running, _ = await store.submit(job(2), 10, now=103.0)
    await store.claim("replica-a", LEASE_S, now=104.0)
    marked = await store.cancel(running.id, now=105.0, retention_s=RETENTION_S, error=CANCELED)
    assert marked.status == JobStatus.RUNNING and marked.cancel_requested
    assert (await store.finish(running.id, "replica-a", JobStatus.CANCELED, 106.0, RETENTION_S))
    again = await store.cancel(running.id, now=107.0, retention_s=RETENTION_S, error=CANCELED)
    assert again.status == JobStatus.CANCELED
    assert (await store.cancel("no-such-job", now=108.0, retention_s=RETENTION_S, error=CANCELED)) is None


@pytest.mark.asyncio
async def test_past_its_retention_nothing_of_a_job_is_kept_but_its_id_for_a_while(store):
    submitted, _ = await store.submit(job(1, key="k"), 10, now=100.0)
    await store.claim("replica-a", LEASE_S, now=101.0)
    await store.add_event(submitted.id, "result", {"seed": 1})
    await store.finish(submitted.id, "replica-a", JobStatus.SUCCEEDED, 110.0, RETENTION_S, result={"seed": 1})
    assert (await store.purge(now=110.0 + RETENTION_S - 1, tombstone_s=TOMBSTONE_S)) == []
    assert (await store.purge(now=110.0 + RETENTION_S + 1, tombstone_s=TOMBSTONE_S)) == [submitted.id]
    tombstone = await store.get(submitted.id)
    assert tombstone.status == JobStatus.EXPIRED
    assert (tombstone.request, tombstone.result, tombstone.fingerprint, tombstone.webhook) == ({}, None, "", None)
    assert (await store.events(submitted.id)) == [] and (await store.image(submitted.id)) is None
    # the idempotency key is free again: a repeat makes a new job
    assert (await store.submit(job(1, key="k"), 10, now=110.0 + RETENTION_S + 2))[0].id != submitted.id
    await store.purge(now=110.0 + RETENTION_S + TOMBSTONE_S + 2, tombstone_s=TOMBSTONE_S)
    assert (await store.get(submitted.id)) is None


@pytest.mark.asyncio
async def test_a_restart_loses_no_job(store, store_url):
    queued, _ = await store.submit(job(1), 10, now=100.0)
    await store.close()
    reopened = open_job_store(store_url)
    try:
        assert (await reopened.get(queued.id)) == queued and (await reopened.image(queued.id)) == b"\x89PNG image"
        assert (await reopened.claim("replica-a", LEASE_S, now=101.0)).id == queued.id
    finally:
        await reopened.close()


@pytest.mark.parametrize("url", ["postgres://db/jobs", "sqlite://", "jobs.sqlite3"])
def test_a_jobs_store_url_of_no_known_kind_is_refused(url):
    with pytest.raises(ValueError, match="jobs_store"):
        open_job_store(url)


@pytest.mark.asyncio
async def test_the_queued_count_is_the_jobs_no_replica_took_nor_a_cancel_ended(store):
    assert (await store.queued_count()) == 0
    submitted = [(await store.submit(job(seed), 10, now=100.0 + seed))[0] for seed in range(3)]
    assert (await store.queued_count()) == 3
    await store.claim("replica-a", LEASE_S, now=104.0)
    await store.cancel(submitted[2].id, now=105.0, retention_s=RETENTION_S, error=CANCELED)
    assert (await store.queued_count()) == 1
