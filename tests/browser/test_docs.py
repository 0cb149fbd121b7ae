"""The API docs (``/docs``) in headless Chromium: Swagger UI renders from the service's own copy, with no request
leaving the service (a machine without internet, like this one, still reads them; no third party sees who does)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect


@pytest.fixture
def requested(page: Page) -> Iterator[list[str]]:
    """Every URL the page requests."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    yield urls


def test_swagger_ui_lists_the_portrait_route_with_nothing_fetched_elsewhere(page: Page, requested, serve_url: str):
    page.goto("/docs")
    expect(page.locator(".opblock-summary-path", has_text="/v1/portraits").first).to_be_visible(timeout=30_000)
    assert [url for url in requested if not url.startswith((serve_url, "data:", "blob:"))] == []

