"""Work nobody waits for stops, and no single request can take the machine: through real HTTP, and through the stage
handles where HTTP cannot place a request (a batch neighbour, a cancel on purpose).

- Clients that give up on heavy requests (a synchronous call closed, an event stream closed mid-blend, a request
  answered 408 past its timeout) and a request cancelled on purpose (the stage graph's task cancelled, as the job
  API will): the denoising-step counter settles, far below what their work needed, and the next ordinary request
  is answered within 1.5× an idle baseline measured in the same test.
- A request whose batch neighbour leaves mid-blend gets the same candidates as alone (through the blend sampler's
  handle, as the ingress calls it: HTTP cannot place two requests in one batch).
- A request over the per-request cost ceiling: 422 ``request_too_costly`` naming the fields to lower, at once.
- The heaviest admissible request is answered (200 or 408) while the service answers others, and stays healthy.

The figures (latencies against the baseline, steps run) are printed as JSON lines.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time

import httpx
import pytest
from conftest import metric_total
from numerics import assert_images_close
from reliability_kit import APP, FAST, STAGES, Answer, concurrently, post_portrait

from serve_app.admission import request_cost
from serve_app.portrait_request import portrait_request
from serve_app.schemas import PortraitOptions
from serve_app.styles.catalog import StyleCatalog

pytestmark = pytest.mark.usefixtures("serve_url")
STYLE = "xmas-sweater"
ORDINARY = {**FAST, "style": STYLE, "num_candidates": "2", "steps": "8"}
# Long in steps, within the cost ceiling (18.8 units of the session's 20): seconds of work per request here.
HEAVY_STEPS = 150
HEAVY = {**FAST, "style": STYLE, "num_candidates": "2", "size": "128", "steps": str(HEAVY_STEPS), "seed": "5"}
CLIENTS = 2
GIVE_UP_S = 1.5
STEPS = "ray_portrait_denoising_steps_total"
# A heavy request blends for 98 of its 150 steps (xmas-sweater's t1 is 0.35); had the work of the requests given
# up gone on, the blend stage would have run at least that. What runs instead: a step or two of theirs, and the
# ordinary request's 5.
BLEND_STEPS_BOUND = HEAVY_STEPS // 2


def cost_of(fields: dict, styles_dir) -> float:
    """What admission counts for a request with these form fields."""
    manifest = StyleCatalog(str(styles_dir)).get(fields["style"]).manifest
    return request_cost(portrait_request(PortraitOptions.model_validate(fields), manifest, seed=1))


def report(capsys: pytest.CaptureFixture, **figures) -> None:
    with capsys.disabled():
        print("\n" + json.dumps(figures))


def ordinary_s(url: str, face: bytes) -> float:
    start = time.perf_counter()
    answer = post_portrait(url, face, ORDINARY)
    assert answer.status == 200, answer
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def idle_s(serve_url: str, sample_face: bytes) -> float:
    """An ordinary request's latency on the idle service: the median of three, after one to warm up."""
    ordinary_s(serve_url, sample_face)
    return statistics.median(ordinary_s(serve_url, sample_face) for _ in range(3))


def settled_steps(metrics_url: str, quiet_s: float = 3.0, within_s: float = 30.0) -> dict[str, float]:
    """The denoising steps each diffusion stage ran, once the counts have not moved for ``quiet_s`` (Ray exports
    metrics every second in the test session); raises if they still move after ``within_s``."""

    def now() -> dict[str, float]:
        return {stage: metric_total(metrics_url, STEPS, stage=stage) for stage in ("layout", "blend")}

    start = last_change = time.monotonic()
    steps = now()
    while time.monotonic() - last_change < quiet_s:
        if time.monotonic() - start > within_s:
            raise TimeoutError(f"denoising steps still advancing {within_s} s on: {steps}")
        time.sleep(0.25)
        if (latest := now()) != steps:
            steps, last_change = latest, time.monotonic()
    return steps


def steps_since(before: dict[str, float], metrics_url: str) -> dict[str, float]:
    return {stage: count - before[stage] for stage, count in settled_steps(metrics_url).items()}


def hang_up_sync(url: str, face: bytes) -> str:
    """A synchronous call closed ``GIVE_UP_S`` into the request."""
    files = {"image": ("face.png", face)}
    try:
        return str(httpx.post(f"{url}/v1/portraits", files=files, data=HEAVY, timeout=GIVE_UP_S).status_code)
    except httpx.TimeoutException:
        return "hung up"


def hang_up_mid_blend(url: str, face: bytes, fields: dict = HEAVY) -> str:
    """An event stream closed at its first blend step."""
    files, headers = {"image": ("face.png", face)}, {"accept": "text/event-stream"}
    with httpx.stream("POST", f"{url}/v1/portraits", files=files, data=fields, headers=headers, timeout=120) as stream:
        for line in stream.iter_lines():
            if line == "event: step":
                return "hung up"
    return f"ended: {stream.status_code}"


def time_out(url: str, face: bytes) -> str:
    """A call the service answers 408 after ``GIVE_UP_S`` (Serve's per-request ``x-request-timeout-seconds``)."""
    headers = {"x-request-timeout-seconds": str(GIVE_UP_S)}
    answer = post_portrait(url, face, HEAVY, headers=headers)
    return f"{answer.status} {answer.code or ''}".strip()


@pytest.mark.parametrize(
    ("give_up", "outcome"),
    [(hang_up_sync, "hung up"), (hang_up_mid_blend, "hung up"), (time_out, "408")],
    ids=["sync hang-up", "stream closed mid-blend", "408 timeout"],
)
def test_work_stops_when_its_clients_give_up_and_the_next_client_waits_for_nothing(
    serve_url, metrics_url, sample_face, idle_s, give_up, outcome, capsys
):
    before = settled_steps(metrics_url)
    outcomes = sorted(got for got, _ in concurrently([lambda: give_up(serve_url, sample_face)] * CLIENTS, CLIENTS))
    next_s = ordinary_s(serve_url, sample_face)
    steps = steps_since(before, metrics_url)
    report(capsys, gave_up={"how": give_up.__name__, "clients": outcomes, "next_s": round(next_s, 2),
                            "idle_s": round(idle_s, 2), "ratio": round(next_s / idle_s, 2), "steps_run": steps})
    assert all(got.startswith(outcome) for got in outcomes), outcomes
    assert steps["blend"] < BLEND_STEPS_BOUND
    assert next_s <= 1.5 * idle_s


def test_a_request_cancelled_on_purpose_stops_its_stages_work(metrics_url, sample_face, live_styles_dir):
    """The job API's cancel: the stage graph's task for a request is cancelled, as the ingress does for a client
    that hung up; the layout and blend loops stop at their next step."""
    from ray import serve

    from deployments.stream import PortraitJob
    from serve_app.graph import StageGraph, StageHandles

    style = StyleCatalog(str(live_styles_dir)).get(STYLE)
    request = portrait_request(PortraitOptions.model_validate(HEAVY), style.manifest, seed=5)
    job = PortraitJob("cancelled-on-purpose", style.versioned_id, request)
    before = settled_steps(metrics_url)

    async def cancel_once_sampling() -> None:
        graph = StageGraph(StageHandles(*(serve.get_deployment_handle(name, APP) for name in STAGES)), 240)
        task = asyncio.create_task(graph.generate(job, [sample_face]))
        while metric_total(metrics_url, STEPS, stage="layout") == before["layout"]:  # the layout's loop is under way
            await asyncio.sleep(0.25)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(cancel_once_sampling(), 60))
    assert steps_since(before, metrics_url)["blend"] < BLEND_STEPS_BOUND


def test_a_request_whose_batch_neighbour_leaves_mid_blend_gets_its_candidates_as_alone(
    metrics_url, models, live_styles_dir
):
    """Through the blend sampler's handle, as the ingress calls it: two requests sent together share one batch
    (requests that reach a batched stage more than its batch wait apart never do, so HTTP cannot place them); the
    neighbour's call is cancelled at its first step, its rows leave the batch, and mine go on as they would alone."""
    import torch
    from ray import serve

    from deployments.layout_generator import PlannedLayout
    from deployments.stream import Step
    from serve_app.pipeline.layout import generate_layout
    from serve_app.pipeline.masks import prior_ellipse
    from serve_app.pipeline.sampling import SamplingPlan

    style = StyleCatalog(str(live_styles_dir)).get(STYLE)
    identity = torch.nn.functional.normalize(torch.randn(512, generator=torch.Generator().manual_seed(5)), dim=0)
    mine = SamplingPlan(style.manifest.prompt("a person"), style.manifest.negative_prompt, (identity,), (21, 22),
                        size=64, steps=60, guidance_scale=7.5, identity_weight=0.8, t1=0.35)
    neighbour = SamplingPlan(**{**mine.__dict__, "seeds": (31, 32, 33, 34), "identity_embeddings": (-identity,)})
    prior = prior_ellipse(64, (0.5, 0.4), (0.2, 0.26))
    planned = {name: PlannedLayout(plan, generate_layout(models.diffusion, models.faces, plan, [prior]))
               for name, plan in (("mine", mine), ("neighbour", neighbour))}
    sampler = serve.get_deployment_handle("BlendSampler", APP).options(
        multiplexed_model_id=style.versioned_id, stream=True
    )

    def paired_batches() -> float:
        """Blend batches of two requests so far (the histogram's buckets: ≤ 2 and not ≤ 1)."""
        return sum(
            sign * metric_total(metrics_url, "ray_portrait_batch_size_bucket", stage="blend", le=le)
            for sign, le in ((1, "2.0"), (-1, "1.0"))
        )

    async def candidates(call) -> list:
        return [item async for item in call][-1]

    async def with_a_neighbour_leaving() -> tuple[list, int]:
        mine_call, neighbour_call = sampler.remote(planned["mine"]), sampler.remote(planned["neighbour"])
        neighbour_steps = 0
        async for item in neighbour_call:
            if isinstance(item, Step):
                neighbour_steps += 1
                neighbour_call.cancel()
                break
        return await candidates(mine_call), neighbour_steps

    alone = asyncio.run(candidates(sampler.remote(planned["mine"])))
    settled_steps(metrics_url)  # the metrics of the run alone are in
    paired_before = paired_batches()
    together, neighbour_steps = asyncio.run(with_a_neighbour_leaving())
    settled_steps(metrics_url)
    assert neighbour_steps == 1 and paired_batches() - paired_before == 1
    assert [c.seed for c in together] == [c.seed for c in alone] == [21, 22]
    # One batch of six candidates for a step, then of two, against two alone: the tolerance of tests/numerics.py.
    assert_images_close([c.image for c in together], [c.image for c in alone])


def test_a_request_over_the_cost_ceiling_is_refused_at_once_naming_the_fields_to_lower(
    serve_url, sample_face, styles_dir
):
    heaviest = {**FAST, "style": STYLE, "num_candidates": "8", "top_k": "8", "size": "2048", "steps": "150",
                "upscale": "4"}
    response = httpx.post(f"{serve_url}/v1/portraits", files={"image": ("face.png", sample_face)}, data=heaviest,
                          timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "request_too_costly"
    assert f"{cost_of(heaviest, styles_dir):.0f} units" in error["message"]
    assert [field["field"] for field in error["fields"]] == ["num_candidates", "steps", "size", "upscale"]


def test_the_heaviest_admissible_request_is_answered_while_the_service_answers_others(
    serve_url, sample_face, app_args, styles_dir, capsys
):
    heaviest = {**FAST, "style": STYLE, "num_candidates": "8", "size": "128", "steps": "39"}
    cost = cost_of(heaviest, styles_dir)
    assert 0.9 * app_args["max_request_cost"] < cost <= app_args["max_request_cost"]
    answers: dict[str, Answer] = {}
    heavy = threading.Thread(target=lambda: answers.update(heaviest=post_portrait(serve_url, sample_face, heaviest)))
    start = time.perf_counter()
    heavy.start()
    while_running = {
        "healthz": httpx.get(f"{serve_url}/healthz", timeout=30).status_code,
        "styles": httpx.get(f"{serve_url}/v1/styles", timeout=30).status_code,
        "ordinary": post_portrait(serve_url, sample_face, ORDINARY).status,
    }
    heavy.join()
    heaviest_s = time.perf_counter() - start
    report(capsys, heaviest_admissible={"cost": cost, "status": answers["heaviest"].status,
                                        "seconds": round(heaviest_s, 1), "while_running": while_running})
    assert answers["heaviest"].status in (200, 408) and answers["heaviest"].is_json
    assert while_running == {"healthz": 200, "styles": 200, "ordinary": 200}
    assert httpx.get(f"{serve_url}/healthz", timeout=30).json() == {"status": "ok"}
    assert post_portrait(serve_url, sample_face, ORDINARY).status == 200
