"""The embedded job store: one SQLite file (``sqlite:///path``), shared by the ingress replicas of one machine.

Writes that must be atomic across replicas (a submit with its idempotency key and queue bound, a claim) run in
``BEGIN IMMEDIATE`` transactions, which SQLite serialises across processes; WAL lets readers go on meanwhile.
Each call runs on a worker thread, off the event loop, one at a time per store (sqlite3 connections are not
shared between threads at once)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from serve_app.jobs.records import (
    IdempotencyKeyReusedError,
    JobEvent,
    JobRecord,
    JobStatus,
    NewJob,
    QueueFullError,
    check_outcome,
    new_job_id,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    webhook TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    image BLOB
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""
RECORD_COLUMNS = (
    "id, status, request, fingerprint, webhook, created_at, started_at, finished_at, expires_at, owner, "
    "lease_until, attempts, cancel_requested, result, error"
)


def record_of(row: tuple) -> JobRecord:
    (job_id, status, request, fingerprint, webhook, created_at, started_at, finished_at, expires_at, owner,
     lease_until, attempts, cancel_requested, result, error) = row
    return JobRecord(
        id=job_id,
        status=JobStatus(status),
        request=json.loads(request),
        fingerprint=fingerprint,
        webhook=webhook,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        expires_at=expires_at,
        owner=owner,
        lease_until=lease_until,
        attempts=attempts,
        cancel_requested=bool(cancel_requested),
        result=None if result is None else json.loads(result),
        error=None if error is None else json.loads(error),
    )


class SQLiteJobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA secure_delete=ON")  # deleted images and results are overwritten, not left
        self._connection.executescript(SCHEMA)
        self._lock = threading.Lock()

    @classmethod
    def at(cls, url: str) -> SQLiteJobStore:
        """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (SQLAlchemy's form)."""
        path = url.removeprefix("sqlite:///")
        if not path or path == url:
            raise ValueError(f"a SQLite jobs_store URL is sqlite:///<file>, got {url!r}")
        return cls(Path(path).expanduser().resolve())

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return work(self._connection)

        return await asyncio.to_thread(locked)

    @staticmethod
    @contextmanager
    def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @staticmethod
    def _record(connection: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = connection.execute(f"SELECT {RECORD_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else record_of(row)

    async def submit(self, job: NewJob, max_queued: int, now: float) -> tuple[JobRecord, bool]:
        def submit(connection: sqlite3.Connection) -> tuple[JobRecord, bool]:
            with self._transaction(connection):
                if job.idempotency_key is not None:
                    row = connection.execute(
                        "SELECT id, fingerprint FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                    ).fetchone()
                    if row is not None:
                        if row[1] != job.fingerprint:
                            raise IdempotencyKeyReusedError(job.idempotency_key)
                        return self._record(connection, row[0]), False
                (queued,) = connection.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()
                if queued >= max_queued:
                    raise QueueFullError(f"{queued} jobs are queued")
                job_id = new_job_id()
                connection.execute(
                    "INSERT INTO jobs (id, status, request, fingerprint, idempotency_key, webhook, created_at, image) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (job_id, json.dumps(job.request), job.fingerprint, job.idempotency_key, job.webhook, now,
                     job.image),
                )
                return self._record(connection, job_id), True

        return await self._run(submit)

    async def get(self, job_id: str) -> JobRecord | None:
        return await self._run(lambda connection: self._record(connection, job_id))

    async def image(self, job_id: str) -> bytes | None:
        def image(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute("SELECT image FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return None if row is None else row[0]

        return await self._run(image)

    async def queue_position(self, job_id: str) -> int | None:
        def position(connection: sqlite3.Connection) -> int | None:
            row = connection.execute(
                "SELECT (SELECT COUNT(*) FROM jobs AS earlier WHERE earlier.status = 'queued' AND "
                "(earlier.created_at, earlier.id) <= (job.created_at, job.id)) FROM jobs AS job "
                "WHERE job.id = ? AND job.status = 'queued'",
                (job_id,),
            ).fetchone()
            return None if row is None else row[0]

        return await self._run(position)

    async def claim(self, owner: str, lease_s: float, now: float) -> JobRecord | None:
        def claim(connection: sqlite3.Connection) -> JobRecord | None:
            with self._transaction(connection):
                row = connection.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?) "
                    "ORDER BY created_at, id LIMIT 1",
                    (now,),
                ).fetchone()
                if row is None:
                    return None
                connection.execute(
                    "UPDATE jobs SET status = 'running', owner = ?, lease_until = ?, attempts = attempts + 1, "
                    "started_at = COALESCE(started_at, ?) WHERE id = ?",
                    (owner, now + lease_s, now, row[0]),
                )
                return self._record(connection, row[0])

        return await self._run(claim)

    async def renew(self, job_id: str, owner: str, lease_s: float, now: float) -> bool:
        def renew(connection: sqlite3.Connection) -> bool:
            changed = connection.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ? AND status = 'running'",
                (now + lease_s, job_id, owner),
            ).rowcount
            return changed == 1

        return await self._run(renew)

    async def add_event(self, job_id: str, name: str, data: dict) -> JobEvent:
        def add(connection: sqlite3.Connection) -> JobEvent:
            with self._transaction(connection):
                (last,) = connection.execute(
                    "SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = ?", (job_id,)
                ).fetchone()
                connection.execute(
                    "INSERT INTO job_events (job_id, seq, name, data) VALUES (?, ?, ?, ?)",
                    (job_id, last + 1, name, json.dumps(data)),
                )
            return JobEvent(last + 1, name, data)

        return await self._run(add)

    async def events(self, job_id: str, after: int = 0) -> list[JobEvent]:
        def events(connection: sqlite3.Connection) -> list[JobEvent]:
            rows = connection.execute(
                "SELECT seq, name, data FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq", (job_id, after)
            ).fetchall()
            return [JobEvent(seq, name, json.loads(data)) for seq, name, data in rows]

        return await self._run(events)

    async def finish(
        self,
        job_id: str,
        owner: str,
        status: JobStatus,
        now: float,
        retention_s: float,
        result: dict | None = None,
        error: dict | None = None,
    ) -> bool:
        check_outcome(status)

        def finish(connection: sqlite3.Connection) -> bool:
            changed = connection.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, expires_at = ?, result = ?, error = ?, image = NULL, "
                "owner = NULL, lease_until = NULL WHERE id = ? AND owner = ? AND status = 'running'",
                (status.value, now, now + retention_s, None if result is None else json.dumps(result),
                 None if error is None else json.dumps(error), job_id, owner),
            ).rowcount
            return changed == 1

        return await self._run(finish)

    async def cancel(self, job_id: str, now: float, retention_s: float, error: dict) -> JobRecord | None:
        def cancel(connection: sqlite3.Connection) -> JobRecord | None:
            with self._transaction(connection):
                connection.execute(
                    "UPDATE jobs SET status = 'canceled', finished_at = ?, expires_at = ?, error = ?, image = NULL "
                    "WHERE id = ? AND status = 'queued'",
                    (now, now + retention_s, json.dumps(error), job_id),
                )
                connection.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,)
                )
                return self._record(connection, job_id)

        return await self._run(cancel)

    async def purge(self, now: float, tombstone_s: float) -> list[str]:
        def purge(connection: sqlite3.Connection) -> list[str]:
            with self._transaction(connection):
                connection.execute(
                    "DELETE FROM jobs WHERE status = 'expired' AND expires_at < ?", (now,)
                )
                expired = [
                    job_id
                    for (job_id,) in connection.execute(
                        "SELECT id FROM jobs WHERE status != 'expired' AND expires_at < ?", (now,)
                    ).fetchall()
                ]
                for job_id in expired:
                    connection.execute("DELETE FROM job_events WHERE job_id = ?", (job_id,))
                    connection.execute(
                        "UPDATE jobs SET status = 'expired', request = '{}', fingerprint = '', idempotency_key = NULL, "
                        "webhook = NULL, result = NULL, error = NULL, image = NULL, owner = NULL, lease_until = NULL, "
                        "expires_at = ? WHERE id = ?",
                        (now + tombstone_s, job_id),
                    )
            return expired

        return await self._run(purge)

    async def close(self) -> None:
        await self._run(lambda connection: connection.close())

    async def queued_count(self) -> int:
        def count(connection: sqlite3.Connection) -> int:
            return connection.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]

        return await self._run(count)
