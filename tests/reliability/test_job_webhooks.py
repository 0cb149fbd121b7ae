"""Job webhooks through real HTTP, to a receiver on loopback (let through by the app's ``webhook_allowed_hosts``):
signed the Standard Webhooks way (checked with the ``standardwebhooks`` package), retried with the same id until a
2xx, stopped by a 410, redirects not followed, every attempt visible on the job; URLs the SSRF guard refuses and
canceled jobs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import standardwebhooks
from conftest import WEBHOOK_SECRET
from reliability_kit import wait_until
from test_jobs import FIELDS, LONG, submit, waited

pytestmark = pytest.mark.usefixtures("serve_url")


@dataclass
class Receiver:
    """Answers each POST with the next of ``answers`` (the last one after that) and records what came."""

    url: str
    answers: list[int] = field(default_factory=lambda: [204])
    received: list[tuple[dict, bytes]] = field(default_factory=list)
    redirected: list[str] = field(default_factory=list)

    def expect(self, *answers: int) -> None:
        self.answers[:] = answers
        self.received.clear()
        self.redirected.clear()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["content-length"]))
            if self.path == "/elsewhere":
                state.redirected.append(self.path)
            else:
                state.received.append((dict(self.headers), body))
            status = state.answers[min(len(state.received) - 1, len(state.answers) - 1)]
            self.send_response(status)
            if status in (301, 302, 307, 308):
                self.send_header("location", "/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()


def job_ended_delivery(serve_url: str, job_id: str) -> dict:
    """The job once its webhook's delivery ended (delivered or failed)."""
    def ended() -> bool:
        return httpx.get(f"{serve_url}/v1/jobs/{job_id}", timeout=30).json()["webhook"]["state"] != "pending"

    wait_until(ended, 60, every_s=0.2)
    return httpx.get(f"{serve_url}/v1/jobs/{job_id}", timeout=30).json()


def test_a_receiver_that_fails_twice_gets_the_job_once_signed_with_one_id(serve_url, sample_face, receiver):
    receiver.expect(500, 503, 204)
    submitted = submit(serve_url, sample_face, {**FIELDS, "seed": "41", "webhook": receiver.url})
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["webhook"] == {"url": receiver.url, "state": "pending", "attempts": []}
    done = waited(serve_url, submitted.headers["location"])
    job = job_ended_delivery(serve_url, done["id"])
    assert job["webhook"]["state"] == "delivered"
    assert [a["status_code"] for a in job["webhook"]["attempts"]] == [500, 503, 204]
    assert len(receiver.received) == 3  # delivered once: nothing after the 204
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert ids == {f"msg_{done['id']}"}
    verifier = standardwebhooks.Webhook(WEBHOOK_SECRET)
    for headers, body in receiver.received:
        payload = verifier.verify(body, {name.lower(): value for name, value in headers.items()})
        assert payload["type"] == "job.succeeded" and payload["data"]["id"] == done["id"]
        assert payload["data"]["result"] == done["result"]  # the job as GET shows it, images and all


def test_a_410_stops_the_retries_and_redirects_are_not_followed(serve_url, sample_face, receiver):
    receiver.expect(410)
    gone = submit(serve_url, sample_face, {**FIELDS, "seed": "42", "webhook": receiver.url}).json()
    job = job_ended_delivery(serve_url, gone["id"])
    assert job["webhook"]["state"] == "failed" and [a["status_code"] for a in job["webhook"]["attempts"]] == [410]

    receiver.expect(302)
    moved = submit(serve_url, sample_face, {**FIELDS, "seed": "43", "webhook": receiver.url}).json()
    job = job_ended_delivery(serve_url, moved["id"])
    # every attempt (the first and the app's 3 retries) answered 302; none went where it pointed
    assert job["webhook"]["state"] == "failed" and [a["status_code"] for a in job["webhook"]["attempts"]] == [302] * 4
    assert receiver.redirected == []


def test_a_canceled_job_calls_its_webhook_too(serve_url, sample_face, receiver):
    receiver.expect(200)
    job = submit(serve_url, sample_face, {**LONG, "seed": "44", "webhook": receiver.url}).json()
    httpx.post(f"{serve_url}/v1/jobs/{job['id']}/cancel", timeout=30)
    assert job_ended_delivery(serve_url, job["id"])["webhook"]["state"] == "delivered"
    (_, body), = receiver.received
    assert json.loads(body)["type"] == "job.canceled"
    assert json.loads(body)["data"]["error"]["error"]["code"] == "job_canceled"


@pytest.mark.parametrize(("webhook", "why"), [
    ("https://10.0.0.7/hook", "non-public"),
    ("https://169.254.169.254/latest/meta-data/", "non-public"),
    ("https://[::1]:8443/hook", "non-public"),
    ("http://93.184.215.14/hook", "https"),
    ("https://no-such-host.invalid/hook", "does not resolve"),
])
def test_webhooks_the_guard_refuses_are_a_422_naming_the_field(serve_url, sample_face, webhook, why):
    response = submit(serve_url, sample_face, {**FIELDS, "webhook": webhook})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and error["fields"][0]["field"] == "webhook"
    assert why in error["fields"][0]["message"]
