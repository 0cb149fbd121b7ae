"""The curator console (``/curator``) in headless Chromium against the running service: a curator publishes,
previews, schedules and retires a style, and the studio, open in another tab, follows without a restart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import ADMIN_TOKEN, png_bytes
from playwright.sync_api import Locator, Page, expect
from safetensors.torch import save

from serve_app.pipeline.models import tiny

STYLE = "moon-landing"
TOKEN_KEY = "portrait-studio-admin-token"
GENERATION_MS = 180_000


@pytest.fixture
def lora_file(models, tmp_path: Path) -> Path:
    path = tmp_path / "lora.safetensors"
    path.write_bytes(save(tiny.random_style_lora(models.diffusion.unet, seed=21)))
    return path


@pytest.fixture
def preview_file(tmp_path: Path) -> Path:
    path = tmp_path / "moon.png"
    gradient = np.linspace(0, 255, 96, dtype=np.uint8)
    path.write_bytes(png_bytes(np.dstack([np.tile(gradient, (96, 1))] * 3)))
    return path


def sign_in(page: Page) -> None:
    page.goto("/curator")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#token-save")
    expect(row(page, "film-noir")).to_be_visible()


def row(page: Page, style_id: str) -> Locator:
    return page.locator(f'#styles-table tbody tr[data-style-id="{style_id}"]')


def studio_card(page: Page, style_id: str) -> Locator:
    page.goto("/")
    expect(page.locator(".style-card").first).to_be_visible()
    return page.locator(f'.style-card[data-style-id="{style_id}"]')


def test_the_token_is_kept_in_session_storage_only(page: Page):
    sign_in(page)
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == ADMIN_TOKEN
    assert page.evaluate("localStorage.length") == 0 and page.evaluate("document.cookie") == ""
    page.reload()  # typed once: the tab keeps it
    expect(row(page, "film-noir")).to_be_visible()
    page.click("#token-forget")
    assert page.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None


def test_a_wrong_token_shows_the_apis_refusal(page: Page):
    page.goto("/curator")
    page.fill("#token", "not-the-token")
    page.click("#token-save")
    expect(page.locator("#token-status")).to_contain_text("the admin token is wrong")
    expect(page.locator("#styles-table tbody tr")).to_have_count(0)


def test_a_curator_publishes_previews_schedules_and_retires_a_style_the_studio_follows(
    page: Page, second_page: Page, screenshot, lora_file: Path, preview_file: Path
):
    sign_in(page)
    form = page.locator("#publish-form")
    # 1. A refused upload: the API's messages next to the fields they concern, the library unchanged
    form.locator("[name=id]").fill(STYLE)
    form.locator("[name=prompt_template]").fill("portrait of {subject} on the moon, earthrise behind")
    form.locator('[name="defaults.t1"]').fill("1.5")
    form.locator("[name=lora]").set_input_files(lora_file)
    page.click("#publish")
    expect(form.locator('[data-error-for="manifest.title"]')).to_have_text("Field required")
    expect(form.locator('[data-error-for="manifest.defaults.t1"]')).to_contain_text("less than 1")
    expect(row(page, STYLE)).to_have_count(0)
    screenshot(page, "curator-refused")

    # 2. Published: live at once, in the console and in the studio's gallery with its preview image
    form.locator("[name=title]").fill("Moon landing")
    form.locator("[name=tags]").fill("space, retro")
    form.locator('[name="defaults.t1"]').fill("0.4")
    form.locator("[name=preview]").set_input_files(preview_file)
    page.click("#publish")
    expect(page.locator("#publish-result")).to_contain_text(f"Published {STYLE}@1", timeout=GENERATION_MS)
    expect(form.locator('[data-error-for="manifest.title"]')).to_be_empty()
    expect(row(page, STYLE).locator(".status")).to_have_text("live")
    card = studio_card(second_page, STYLE)
    expect(card.locator(".style-title")).to_have_text("Moon landing")
    expect(card.locator(".tag")).to_have_text(["space", "retro"])
    expect(card.locator("img.style-preview")).to_be_visible()
    assert card.locator("img.style-preview").evaluate("(image) => image.complete && image.naturalWidth") == 96
    screenshot(second_page, "studio-with-published-style")

    # 3. A preview of the published version, painted from the bundled sample face
    row(page, STYLE).locator("button.preview").click()
    expect(row(page, STYLE).locator(".preview-result img")).to_be_visible(timeout=GENERATION_MS)
    expect(row(page, STYLE).locator(".preview-result .score")).to_contain_text("Identity")

    # 4. Scheduled for later: out of the studio until its window opens; cleared, live again
    row(page, STYLE).locator("input.available-from").fill("2099-01-01T00:00")
    row(page, STYLE).locator("button.save").click()
    expect(row(page, STYLE).locator(".status")).to_have_text("scheduled")
    expect(row(page, STYLE).locator(".window")).to_have_text("from 2099-01-01 00:00 UTC")
    expect(studio_card(second_page, STYLE)).to_have_count(0)
    row(page, STYLE).locator("input.available-from").fill("")
    row(page, STYLE).locator("button.save").click()
    expect(row(page, STYLE).locator(".status")).to_have_text("live")
    screenshot(page, "curator")

    # 5. Retired (after a confirmation): gone from the studio, shown as retired in the console
    page.once("dialog", lambda dialog: dialog.accept())
    row(page, STYLE).locator("button.retire").click()
    expect(row(page, STYLE).locator(".status")).to_have_text("retired")
    expect(row(page, STYLE).locator("button.retire")).to_be_disabled()
    expect(studio_card(second_page, STYLE)).to_have_count(0)


def test_the_console_fits_a_phone_screen(page: Page, screenshot):
    page.set_viewport_size({"width": 375, "height": 800})
    sign_in(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "curator-phone")
