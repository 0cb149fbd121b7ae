"""Webhooks of jobs that ended: POSTed signed the Standard Webhooks way (``webhook-id``, the same on every retry;
``webhook-timestamp``; ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``) with the secret of
``STUDIO_WEBHOOK_SECRET`` (``whsec_<base64 key>``), retried with backoff until a 2xx (delivered) or a 410 (the
receiver wants no more), each attempt recorded as a job event.

A webhook URL is an SSRF risk, so it must be https and resolve only to global addresses (no loopback, private,
link-local, metadata or other special ranges), checked at submit and again before every attempt; the request goes
to the address that was checked (no second lookup to rebind) and redirects are not followed. Hosts named in
``webhook_allowed_hosts`` may be anything, and plain http."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx

from serve_app.jobs.documents import WEBHOOK_EVENT, job_response
from serve_app.jobs.records import JobRecord
from serve_app.jobs.results import JobResults
from serve_app.jobs.store import JobStore
from serve_app.jobs.tasks import TaskSet
from serve_app.schemas import JobEnded
from serve_app.settings import PortraitAppArgs

SECRET_ENV = "STUDIO_WEBHOOK_SECRET"
SECRET_PREFIX = "whsec_"


class WebhookRefusedError(ValueError):
    """The URL is not one this service sends webhooks to; the message says why."""


class WebhooksDisabledError(WebhookRefusedError):
    """The service has no (valid) ``STUDIO_WEBHOOK_SECRET``."""


def webhook_secret() -> bytes:
    """The signing key of ``STUDIO_WEBHOOK_SECRET`` (read when used, like the admin token)."""
    value = os.environ.get(SECRET_ENV, "")
    if not value:
        raise WebhooksDisabledError(f"webhooks are off: the service has no {SECRET_ENV}")
    try:
        return base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhooksDisabledError(f"webhooks are off: {SECRET_ENV} is not a whsec_<base64> secret") from None


def signature(secret: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode("ascii")


@dataclass(frozen=True)
class Target:
    """Where an attempt goes: the URL's host, and the checked address to connect to."""

    url: str
    host: str
    address: str


def allowed_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_global and not ip.is_multicast


async def checked_target(url: str, allowed_hosts: list[str]) -> Target:
    """Where ``url`` may be sent to, or ``WebhookRefusedError`` saying why not."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as error:
        raise WebhookRefusedError(f"not a URL: {error}") from None
    if parts.scheme not in ("https", "http") or not host:
        raise WebhookRefusedError("a webhook is an https:// URL")
    if parts.username or parts.password:
        raise WebhookRefusedError("a webhook URL carries no credentials")
    allowed = {name.lower() for name in allowed_hosts}
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as error:  # no such name, or not one (an IDNA label too long…)
        raise WebhookRefusedError(f"the host {host!r} does not resolve: {error}") from None
    addresses = [info[4][0] for info in found]
    if host.lower() in allowed or any(address in allowed for address in addresses):
        return Target(url, host, addresses[0])
    if parts.scheme != "https":
        raise WebhookRefusedError("a webhook is an https:// URL")
    refused = [address for address in addresses if not allowed_address(address)]
    if refused:
        raise WebhookRefusedError(
            f"the host {host!r} resolves to {refused[0]}, a loopback, private, link-local or other non-public address"
        )
    return Target(url, host, addresses[0])


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def final(self) -> bool:
        """Nothing more to try: delivered, or the receiver said 410 Gone."""
        return self.delivered or self.status_code == 410


async def attempt(client: httpx.AsyncClient, target: Target, message_id: str, body: bytes, secret: bytes) -> Attempt:
    """One signed POST of ``body`` to the checked address, not following redirects."""
    now = int(time.time())
    headers = {
        "host": urlsplit(target.url).netloc.rpartition("@")[2],
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(now),
        "webhook-signature": signature(secret, message_id, now, body),
    }
    url = httpx.URL(target.url).copy_with(host=target.address)
    try:
        response = await client.post(url, content=body, headers=headers, extensions={"sni_hostname": target.host})
    except httpx.HTTPError as error:
        return Attempt(None, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    return Attempt(response.status_code, None)


class WebhookSender:
    """Delivers the webhooks of the jobs that end on this replica, each in its own task (a dead receiver holds up
    nothing else). ``on_attempt`` hears the delivery's state after each attempt: ``delivered``, ``pending`` (a retry
    follows) or ``failed`` (none will)."""

    def __init__(
        self, store: JobStore, results: JobResults, args: PortraitAppArgs, on_attempt: Callable[[str], None]
    ) -> None:
        self.store, self.results, self.args, self.on_attempt = store, results, args, on_attempt
        self._deliveries = TaskSet()

    def job_ended(self, record: JobRecord) -> None:
        if record.webhook is not None:
            self._deliveries.start(self.deliver(record))

    async def stop(self) -> None:
        await self._deliveries.stop()

    async def deliver(self, record: JobRecord) -> None:
        """Attempts until one is final or the retries run out, each recorded on the job."""
        ended = JobEnded(
            type=f"job.{record.status.value}",
            timestamp=datetime.now(UTC),
            data=await job_response(self.store, self.results, record),
        )
        body = ended.model_dump_json().encode()
        message_id = f"msg_{record.id}"  # the same on every retry and from every replica: receivers deduplicate
        delays = (0.0, *self.args.webhook_retries_s)
        async with httpx.AsyncClient(timeout=self.args.webhook_timeout_s, follow_redirects=False,
                                     trust_env=False) as client:
            for number, delay in enumerate(delays, start=1):
                await asyncio.sleep(delay)
                try:
                    target = await checked_target(record.webhook, self.args.webhook_allowed_hosts)
                    outcome = await attempt(client, target, message_id, body, webhook_secret())
                    final = outcome.final
                except WebhookRefusedError as refused:  # the address (or the secret) changed since the submit
                    outcome, final = Attempt(None, str(refused)), True
                state = "delivered" if outcome.delivered else "failed" if final or number == len(delays) else "pending"
                await self.store.add_event(record.id, WEBHOOK_EVENT, {
                    "at": datetime.now(UTC).isoformat(), "status_code": outcome.status_code, "error": outcome.error,
                    "state": state,
                })
                self.on_attempt(state)
                if state != "pending":
                    return
