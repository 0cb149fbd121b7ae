"""The studio page (``/``) in headless Chromium against the running service: what a person sees and does."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, expect

GENERATION_S = 180
SCORE = re.compile(r"^Identity [01]\.\d{3}$")
GARBAGE = b"this is not an image, whatever its name says"
# Records every (value, max) the sampler's step bar shows, from the moment it is installed.
RECORD_STEPS = """() => {
  window.recordedSteps = [];
  const bar = document.getElementById("step-bar");
  new MutationObserver(() => window.recordedSteps.push([bar.value, bar.max]))
    .observe(bar, {attributes: true, attributeFilter: ["value", "max"]});
}"""


def choose_style(page: Page, style_id: str) -> None:
    page.locator(f'.style-card[data-style-id="{style_id}"]').click()


def portrait_sources(page: Page) -> list[str]:
    return page.locator("#results .result img.portrait").evaluate_all("images => images.map(image => image.src)")


def test_the_studio_shows_the_live_styles(page: Page, screenshot, serve_url: str):
    live = httpx.get(f"{serve_url}/v1/styles").json()
    page.goto("/")
    expect(page.locator(".style-card")).to_have_count(len(live))
    for style in live:
        card = page.locator(f'.style-card[data-style-id="{style["id"]}"]')
        expect(card.locator(".style-title")).to_have_text(style["title"])
        expect(card.locator(".tag")).to_have_text(style["tags"])
    screenshot(page, "studio")


def test_a_style_is_picked_with_the_keyboard_and_prefills_its_defaults(page: Page, serve_url: str):
    first, second = httpx.get(f"{serve_url}/v1/styles").json()[:2]
    page.goto("/")
    page.locator(f'input[name=style][value="{first["id"]}"]').focus()
    page.keyboard.press("Space")
    expect(page.locator("#t1")).to_have_value(str(first["defaults"]["t1"]))
    page.keyboard.press("ArrowDown")
    expect(page.locator(f'input[name=style][value="{second["id"]}"]')).to_be_checked()
    expect(page.locator("#t1")).to_have_value(str(second["defaults"]["t1"]))
    expect(page.locator("#identity_weight")).to_have_value(str(second["defaults"]["identity_weight"]))


def test_generating_shows_the_progress_then_k_scored_portraits_with_their_masks(page: Page, screenshot):
    page.goto("/")
    page.click("#sample-face")
    expect(page.locator("#image-preview")).to_be_visible()
    choose_style(page, "film-noir")
    page.fill("#num_candidates", "3")
    page.fill("#top_k", "2")
    page.fill("#seed", "7")
    page.select_option("#upscale", "1")
    page.evaluate(RECORD_STEPS)
    page.click("#generate")

    results = page.locator("#results .result")
    expect(results).to_have_count(2, timeout=GENERATION_S * 1000)
    # The step bar advanced through the sampler's steps, one event at a time, to the last
    steps = [value for value, top in page.evaluate("window.recordedSteps") if top > 1]
    total = page.evaluate("document.getElementById('step-bar').max")
    assert steps == sorted(steps) and len(set(steps)) > 2 and steps[-1] == total, steps
    expect(page.locator("#progress li.stage.done")).to_have_count(5)
    expect(page.locator("#result-summary")).to_contain_text("film-noir@1")
    expect(page.locator("#same-again")).to_have_text("Same again (seed 7)")

    for card in results.all():
        expect(card.locator(".score")).to_have_text(SCORE)
        overlay, toggle = card.locator("canvas.mask-overlay"), card.locator("input.mask-toggle")
        expect(overlay).to_be_hidden()
        toggle.check()
        expect(overlay).to_be_visible()
        assert overlay.evaluate("(canvas) => canvas.width") == card.locator("img.portrait").evaluate(
            "(image) => image.naturalWidth"
        )
    screenshot(page, "studio-results")

    with page.expect_download() as download:
        results.first.locator("a.download").click()
    assert download.value.suggested_filename == "portrait-film-noir@1-" + results.first.locator(
        ".seed"
    ).inner_text().removeprefix("seed ") + ".png"
    assert open(download.value.path(), "rb").read().startswith(b"\x89PNG")

    # "Same again" repeats the request with the seed shown: the same portraits come back
    first_run = portrait_sources(page)
    results.evaluate_all("cards => cards.forEach(card => card.dataset.previous = 'yes')")
    page.click("#same-again")
    expect(page.locator("#results .result:not([data-previous])")).to_have_count(2, timeout=GENERATION_S * 1000)
    expect(page.locator("#seed")).to_have_value("7")
    assert portrait_sources(page) == first_run


def test_a_garbage_upload_shows_the_apis_message_next_to_the_image(page: Page, screenshot, serve_url: str):
    refused = httpx.post(
        f"{serve_url}/v1/portraits", files={"image": ("garbage.png", GARBAGE, "image/png")}, data={"style": "film-noir"}
    )
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    page.goto("/")
    page.set_input_files("#image-input", files=[{"name": "garbage.png", "mimeType": "image/png", "buffer": GARBAGE}])
    choose_style(page, "film-noir")
    page.click("#generate")
    expect(page.locator("#image-error")).to_have_text(message)
    expect(page.locator("#form-error")).to_contain_text(message)
    expect(page.locator("#generate")).to_be_enabled()
    screenshot(page, "studio-error")


def test_an_image_over_the_limit_is_refused_before_any_upload(page: Page, app_args: dict):
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    page.goto("/")
    too_big = b"\x89PNG" + bytes(app_args["max_image_bytes"])
    page.set_input_files("#image-input", files=[{"name": "big.png", "mimeType": "image/png", "buffer": too_big}])
    expect(page.locator("#image-error")).to_contain_text("at most 2.0 MB")
    choose_style(page, "film-noir")
    page.click("#generate")
    expect(page.locator("#image-error")).to_contain_text("Choose a face image first")
    assert posts == []


def test_the_studio_fits_a_phone_screen(page: Page, screenshot):
    width = 375
    page.set_viewport_size({"width": width, "height": 800})
    page.goto("/")
    expect(page.locator(".style-card").first).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    screenshot(page, "studio-phone")

