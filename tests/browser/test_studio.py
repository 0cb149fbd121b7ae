"""The studio page (``/``) in headless Chromium against the running service: what a person sees and does. Each
generation is a job whose id the page puts in its URL, so a reload or another tab shows the same job."""

from __future__ import annotations

import re

import httpx
from playwright.sync_api import Page, Route, expect

GENERATION_S = 180
JOB_URL = re.compile(r"/\?job=\w+$")
# Seconds of sampling (as tests/reliability/test_jobs.py's long job): a job to cancel while it runs.
LONG_JOB = {"style": "film-noir", "num_candidates": "2", "top_k": "1", "seed": "18", "steps": "150", "size": "128",
            "upscale": "1"}
SCORE = re.compile(r"^Identity [01]\.\d{3}$")
PERSON_SCORE = r"^Person {} -?\d\.\d{{3}}$"
GARBAGE = b"this is not an image, whatever its name says"
# Records every (value, max) the sampler's step bar shows, from the moment it is installed.
RECORD_STEPS = """() => {
  window.recordedSteps = [];
  const bar = document.getElementById("step-bar");
  new MutationObserver(() => window.recordedSteps.push([bar.value, bar.max]))
    .observe(bar, {attributes: true, attributeFilter: ["value", "max"]});
}"""
# Records the file names of every form's image fields the page sends (Chromium keeps a multipart body's files from
# Playwright's requests).
RECORD_UPLOADS = """() => {
  window.uploadedImages = [];
  const send = window.fetch;
  window.fetch = (url, options = {}) => {
    if (options.body instanceof FormData) window.uploadedImages.push(options.body.getAll("image").map((f) => f.name));
    return send(url, options);
  };
}"""


def choose_style(page: Page, style_id: str) -> None:
    page.locator(f'.style-card[data-style-id="{style_id}"]').click()


def portrait_sources(page: Page) -> list[str]:
    return page.locator("#results .result img.portrait").evaluate_all("images => images.map(image => image.src)")


def face_file(name: str, data: bytes) -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": data}


def generate_with_the_sample_face(page: Page, **controls: str) -> None:
    page.click("#sample-face")
    expect(page.locator("#image-preview")).to_be_visible()
    choose_style(page, "film-noir")
    for control, value in controls.items():
        page.fill(f"#{control}", value)
    page.select_option("#upscale", "1")
    page.click("#generate")


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
    page.evaluate(RECORD_STEPS)
    generate_with_the_sample_face(page, num_candidates="3", top_k="2", seed="7")
    expect(page).to_have_url(JOB_URL)  # it went as a job

    results = page.locator("#results .result")
    expect(results).to_have_count(2, timeout=GENERATION_S * 1000)
    # The step bar advanced through the sampler's steps, one event at a time, to the last
    steps = [value for value, top in page.evaluate("window.recordedSteps") if top > 1]
    total = page.evaluate("document.getElementById('step-bar').max")
    assert steps == sorted(steps) and len(set(steps)) > 2 and steps[-1] == total, steps
    expect(page.locator("#progress li.stage.done")).to_have_count(5)
    expect(page.locator("#job-status")).to_have_text("Done.")
    expect(page.locator("#cancel-job")).to_be_hidden()
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

    # "Same again" repeats the request with the seed shown, as a new job: the same portraits come back
    first_run, first_job = portrait_sources(page), page.url
    results.evaluate_all("cards => cards.forEach(card => card.dataset.previous = 'yes')")
    page.click("#same-again")
    expect(page).not_to_have_url(first_job)
    expect(page).to_have_url(JOB_URL)
    expect(page.locator("#results .result:not([data-previous])")).to_have_count(2, timeout=GENERATION_S * 1000)
    expect(page.locator("#seed")).to_have_value("7")
    assert portrait_sources(page) == first_run


def test_a_group_of_faces_gives_portraits_with_each_persons_score(
    page: Page, screenshot, group_faces: list[bytes]
):
    page.goto("/")
    add, files = page.locator("#add-face"), page.locator("#faces .face-file")
    expect(add).to_be_disabled()  # the first face comes from the picker, the drop zone or the sample face
    page.click("#sample-face")
    expect(page.locator("#image-preview")).to_be_visible()
    names = ["astronaut.png", "group-1.png", "group-3.png"]
    for name, face in zip(names, group_faces, strict=True):
        add.click()
        expect(page.locator("#image-input")).to_be_focused()  # where the new person's face goes
        page.set_input_files("#image-input", files=[face_file(name, face)])
    expect(files).to_have_text(["sample_face.png", *names])
    expect(page.locator("#faces .face-label")).to_have_text(["Person 1", "Person 2", "Person 3", "Person 4"])
    expect(page.locator("#faces img.face-preview")).to_have_count(4)

    # no fifth face: the add control is off, and the picker replaces the last person's face
    expect(add).to_be_disabled()
    expect(page.locator("#add-face-hint")).to_contain_text("4 faces is the most")
    page.set_input_files("#image-input", files=[face_file("group-3-again.png", group_faces[2])])
    expect(files).to_have_text(["sample_face.png", "astronaut.png", "group-1.png", "group-3-again.png"])
    screenshot(page, "studio-group-faces")

    # the sample face is the astronaut's: out it goes; then, with the keyboard, person 3 moves left
    page.get_by_role("button", name="Remove person 1").click()
    expect(files).to_have_text(["astronaut.png", "group-1.png", "group-3-again.png"])
    expect(add).to_be_enabled()
    page.get_by_role("button", name="Move person 3 left").focus()
    page.keyboard.press("Enter")
    expect(files).to_have_text(["astronaut.png", "group-3-again.png", "group-1.png"])
    expect(page.get_by_role("button", name="Move person 2 left")).to_be_focused()

    choose_style(page, "film-noir")
    page.fill("#num_candidates", "2")
    page.fill("#top_k", "2")
    page.select_option("#upscale", "1")
    page.evaluate(RECORD_UPLOADS)
    page.click("#generate")

    results = page.locator("#results .result")
    expect(results).to_have_count(2, timeout=GENERATION_S * 1000)
    # one image field per person, left to right
    assert page.evaluate("window.uploadedImages") == [["astronaut.png", "group-3-again.png", "group-1.png"]]
    for card in results.all():
        people = card.locator(".person-score")
        expect(people).to_have_text([re.compile(PERSON_SCORE.format(person)) for person in (1, 2, 3)])
        scores = [float(text.rsplit(" ", 1)[1]) for text in people.all_inner_texts()]
        expect(card.locator(".score")).to_have_text(f"Identity {min(scores):.3f}")  # the worst person's
        assert "bleed" in people.first.get_attribute("title")
    screenshot(page, "studio-group-results")


def test_an_error_about_one_of_several_faces_names_the_person_next_to_the_faces(page: Page, group_faces: list[bytes]):
    """A stubbed refusal: the API's own is tested in tests/test_group_http.py; here, where the page shows it."""
    message = "images 1 and 2 show the same person (identity score 0.93 ≥ 0.75); send each person once"
    refusal = {"code": "same_person", "message": message, "fields": [{"field": "image[1]", "message": message}]}
    page.route("**/v1/jobs", lambda route: route.fulfill(status=422, json={"error": refusal}))
    page.goto("/")
    page.click("#sample-face")
    expect(page.locator("#image-preview")).to_be_visible()
    page.click("#add-face")
    choose_style(page, "film-noir")
    page.click("#generate")  # person 2 has no face yet
    expect(page.locator("#image-error")).to_have_text("Choose the face of person 2, or remove them.")

    page.set_input_files("#image-input", files=[face_file("astronaut.png", group_faces[0])])
    expect(page.locator("#faces .face-file")).to_have_text(["sample_face.png", "astronaut.png"])
    page.click("#generate")
    expect(page.locator("#image-error")).to_have_text(f"Person 2: {message}")
    expect(page.locator("#form-error")).to_contain_text(message)
    expect(page.locator("#generate")).to_be_enabled()


def test_another_tab_and_a_reload_at_the_jobs_url_show_the_same_job(page: Page, second_page: Page):
    page.goto("/")
    generate_with_the_sample_face(page, num_candidates="2", top_k="2", seed="11")
    expect(page).to_have_url(JOB_URL)
    second_page.goto(page.url)  # while the job runs, most likely: the tab replays its events so far, then live ones
    for tab in (page, second_page):
        expect(tab.locator("#results .result")).to_have_count(2, timeout=GENERATION_S * 1000)
    assert portrait_sources(second_page) == portrait_sources(page)

    first_run = portrait_sources(page)
    page.reload()  # after the end: the finished job, its progress and its portraits
    expect(page.locator("#results .result")).to_have_count(2)
    expect(page.locator("#progress li.stage.done")).to_have_count(5)
    expect(page.locator("#job-status")).to_have_text("Done.")
    expect(page.locator("#generate")).to_be_enabled()
    assert portrait_sources(page) == first_run


def test_cancel_stops_a_running_job_and_the_page_says_so(page: Page, screenshot, serve_url: str, sample_face: bytes):
    job = httpx.post(
        f"{serve_url}/v1/jobs", files={"image": ("face.png", sample_face)}, data=LONG_JOB, timeout=60
    ).json()
    page.goto(f"/?job={job['id']}")  # as the studio that submitted it shows it after a reload
    expect(page.locator("#step-label")).to_contain_text("step", timeout=60_000)  # it samples
    expect(page.locator("#job-status")).to_have_text("Running.")
    expect(page.locator("#generate")).to_be_disabled()
    screenshot(page, "studio-job-running")
    page.click("#cancel-job")
    expect(page.locator("#job-status")).to_contain_text("Canceled", timeout=60_000)
    expect(page.locator("#cancel-job")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#results-panel")).to_be_hidden()
    assert httpx.get(f"{serve_url}/v1/jobs/{job['id']}").json()["status"] == "canceled"


def test_a_queued_job_shows_its_place_in_the_queue(page: Page):
    """Stubbed answers: queueing for real takes more concurrent jobs than this machine runs in a test."""
    places = iter([2, 1])
    job = {"id": "a1b2c3", "status": "queued", "created_at": "2025-01-01T00:00:00Z", "started_at": None,
           "finished_at": None, "expires_at": None, "progress": None, "result": None, "error": None, "webhook": None}

    def answer_job(route: Route) -> None:
        route.fulfill(json={**job, "queue_position": next(places, 1)})

    page.route("**/v1/jobs/a1b2c3", answer_job)
    # no event yet; "retry" keeps EventSource from asking again during the test
    page.route("**/v1/jobs/a1b2c3/events", lambda route: route.fulfill(
        content_type="text/event-stream", body="retry: 600000\n\n"))
    page.goto("/?job=a1b2c3")
    expect(page.locator("#job-status")).to_have_text("Waiting in the queue: number 2 in line.")
    expect(page.locator("#job-status")).to_have_text("Waiting in the queue: number 1 in line.")
    expect(page.locator("#cancel-job")).to_be_visible()


def test_a_link_to_an_unknown_or_expired_job_says_so(page: Page):
    page.goto("/?job=0123456789abcdef")
    expect(page.locator("#form-error")).to_have_text("There is no such job: check the link, or generate new portraits.")
    expect(page.locator("#progress")).to_be_hidden()
    expect(page.locator("#generate")).to_be_enabled()

    # past its retention the service answers 410 (after an hour here; stubbed)
    page.route("**/v1/jobs/fedcba9876543210", lambda route: route.fulfill(status=410, json={"error": {
        "code": "job_expired", "message": "job 'fedcba9876543210' finished longer ago than this service keeps jobs"}}))
    page.goto("/?job=fedcba9876543210")
    expect(page.locator("#form-error")).to_contain_text("its portraits have been deleted")
    expect(page.locator("#progress")).to_be_hidden()


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

