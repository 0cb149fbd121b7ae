"""Webhook signing and the SSRF guard, without a service: the signature as an implementation that is not ours
(``standardwebhooks``) verifies it, the secret's forms, and which URLs the guard lets through (after DNS)."""

from __future__ import annotations

import asyncio
import time

import pytest
import standardwebhooks
from conftest import WEBHOOK_SECRET

from serve_app.jobs.webhooks import (
    SECRET_ENV,
    WebhookRefusedError,
    WebhooksDisabledError,
    allowed_address,
    checked_target,
    signature,
    webhook_secret,
)


def test_the_signature_verifies_with_the_standard_webhooks_library(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, WEBHOOK_SECRET)
    body, timestamp = b'{"type": "job.succeeded"}', int(time.time())  # the library checks it is ±5 min of now
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp),
               "webhook-signature": signature(webhook_secret(), "msg_1", timestamp, body)}
    verifier = standardwebhooks.Webhook(WEBHOOK_SECRET)
    assert verifier.verify(body, headers) == {"type": "job.succeeded"}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body + b" ", headers)


@pytest.mark.parametrize("value", ["", "whsec_not base64!"])
def test_without_a_valid_secret_webhooks_are_off(monkeypatch, value):
    monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(WebhooksDisabledError, match=SECRET_ENV):
        webhook_secret()


@pytest.mark.parametrize(("address", "allowed"), [
    ("93.184.215.14", True),
    ("2606:4700::1111", True),
    ("127.0.0.1", False),
    ("10.1.2.3", False),
    ("172.16.0.1", False),
    ("192.168.1.1", False),
    ("169.254.169.254", False),  # the cloud metadata service
    ("100.64.0.1", False),  # carrier-grade NAT
    ("0.0.0.0", False),
    ("::1", False),
    ("fd00:ec2::254", False),  # AWS's metadata service over IPv6
    ("fe80::1", False),
    ("::ffff:127.0.0.1", False),  # loopback written as IPv4-mapped IPv6
    ("224.0.0.1", False),
])
def test_only_global_addresses_are_allowed(address, allowed):
    assert allowed_address(address) is allowed


@pytest.mark.parametrize(("url", "why"), [
    ("http://93.184.215.14/hook", "https"),
    ("ftp://93.184.215.14/hook", "https"),
    ("https://user:secret@93.184.215.14/hook", "credentials"),
    ("https://10.0.0.7/hook", "non-public"),
    ("https://169.254.169.254/latest/meta-data/", "non-public"),
    ("https://[::1]:8443/hook", "non-public"),
    ("https://localhost:8443/hook", "non-public"),  # a name, refused for where it resolves
    ("https://no-such-host.invalid/hook", "does not resolve"),
    ("https://[::1/hook", "not a URL"),
])
def test_the_guard_refuses_what_is_not_a_public_https_host(url, why):
    with pytest.raises(WebhookRefusedError, match=why):
        asyncio.run(checked_target(url, allowed_hosts=[]))


def test_allowed_hosts_pass_the_guard_even_on_plain_http():
    target = asyncio.run(checked_target("http://localhost:9/hook", allowed_hosts=["127.0.0.1"]))
    assert target.host == "localhost" and target.address in ("127.0.0.1", "::1")
    assert asyncio.run(checked_target("https://93.184.215.14/hook", [])).address == "93.184.215.14"
