"""Fixtures of the browser tests, a plugin of ``tests/conftest.py`` (a second module named ``conftest`` would
shadow the first, which the tests import from): headless Chromium from Debian's ``chromium`` package (``.ci/run`` installs it), driven by Playwright for Python
through ``executable_path``, so nothing is downloaded. Each page gets a fresh browser context (its own
sessionStorage) and its test fails on a script error or a Content-Security-Policy violation; screenshots go to one
temporary folder, printed at the end of the run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; without the background-networking flags it keeps dialling Google's hosts,
# which this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
SCREENSHOTS_PREFIX = "portrait-studio-screenshots-"


SCREENSHOT_FOLDERS: list[Path] = []


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """The folder every page's screenshot goes to, kept after the run for a person to look at."""
    SCREENSHOT_FOLDERS.append(Path(tempfile.mkdtemp(prefix=SCREENSHOTS_PREFIX)))
    return SCREENSHOT_FOLDERS[-1]


def pytest_terminal_summary(terminalreporter) -> None:
    for folder in SCREENSHOT_FOLDERS:
        terminalreporter.write_line(f"browser screenshots: {folder}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Per module: Playwright's sync API keeps an event loop running in the main thread while it is open, and
    later tests' ``asyncio.run`` would refuse to start under it."""
    assert Path(CHROMIUM).exists(), "install Debian's chromium package (.ci/run does)"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class PageProblems:
    """Script errors and CSP violations a page reported."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.found.append(message.text)

    def page_error(self, error: Exception) -> None:
        self.found.append(str(error))


def checked_page(browser: Browser, serve_url: str) -> Iterator[Page]:
    """A page in a fresh context with the service as its base URL; its test fails on a script error or a CSP
    violation it reported."""
    context = browser.new_context(viewport=DESKTOP, base_url=serve_url)
    page = context.new_page()
    problems = PageProblems()
    page.on("console", problems.console)
    page.on("pageerror", problems.page_error)
    try:
        yield page
    finally:
        context.close()
    assert problems.found == []


@pytest.fixture
def page(browser: Browser, serve_url: str) -> Iterator[Page]:
    yield from checked_page(browser, serve_url)


@pytest.fixture
def second_page(browser: Browser, serve_url: str) -> Iterator[Page]:
    """Another tab, in a context of its own (a person with the studio open while a curator works)."""
    yield from checked_page(browser, serve_url)


@pytest.fixture
def screenshot(screenshots: Path) -> Callable[[Page, str], None]:
    """Saves a full-page screenshot under a name."""

    def save(page: Page, name: str) -> None:
        page.screenshot(path=str(screenshots / f"{name}.png"), full_page=True)

    return save
