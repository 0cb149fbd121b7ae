"""The stage graph's request timeout (a portrait request's, an uploaded LoRA's check) and its retry of a stage
that died, with stand-in stage handles: a JSON-mappable 408 or 503 and every stage call cancelled; and the
ingress, a plain class, serving its app over such handles without Ray. (Through HTTP: tests/reliability/ kills
real replicas.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from ray.exceptions import ActorDiedError, RayTaskError
from ray.serve.exceptions import RayServeException

from deployments.stream import PortraitJob
from serve_app.errors import RequestTimeoutError, StageUnavailableError
from serve_app.graph import StageGraph, StageHandles
from serve_app.ingress import PortraitIngress
from serve_app.portrait_request import portrait_request
from serve_app.schemas import PortraitOptions
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog


class StandInCall:
    """A stand-in streaming call whose stream never yields, or raises ``error``; records its cancellation."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.cancelled = False

    async def _to_object_ref_gen(self) -> StandInCall:
        return self

    def __aiter__(self) -> StandInCall:
        return self

    async def __anext__(self):
        if self.error is not None:
            raise self.error
        await asyncio.get_running_loop().create_future()

    def __await__(self):  # a unary call (validate_lora) answers like the stream's first item
        return self.__anext__().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class UnroutedCall(StandInCall):
    """A call Serve's router could not send (its argument's replica died): awaiting it raises ``error``, and so does
    cancelling it, as Serve's does."""

    async def _to_object_ref_gen(self) -> StandInCall:
        raise self.error

    def cancel(self) -> None:
        raise self.error


class StandInStage:
    """A stand-in DeploymentHandle whose calls never answer, or fail with ``error``."""

    def __init__(self, error: BaseException | None = None, call: type[StandInCall] = StandInCall) -> None:
        self.error = error
        self.call = call
        self.calls: list[StandInCall] = []

    def options(self, **_) -> StandInStage:
        return self

    @property
    def validate_lora(self) -> StandInStage:
        return self

    def remote(self, *_) -> StandInCall:
        self.calls.append(self.call(self.error))
        return self.calls[-1]


@pytest.fixture
def job(styles_dir) -> PortraitJob:
    style = StyleCatalog(styles_dir).get("film-noir")
    return PortraitJob("r1", style.versioned_id, portrait_request(PortraitOptions(style="film-noir"), style.manifest, 1))


def test_a_request_over_the_timeout_is_408_and_cancels_its_stages(job):
    stages = [StandInStage() for _ in range(5)]
    with pytest.raises(RequestTimeoutError) as error:
        asyncio.run(StageGraph(StageHandles(*stages), request_timeout_s=0.2).generate(job, [b"image"]))
    assert (error.value.code, error.value.http_status) == ("timeout", 408)
    started = [call for stage in stages for call in stage.calls]
    assert len(started) == 1 and all(call.cancelled for call in started)  # the next stage waits for the preprocessor


def test_a_stage_that_died_is_retried_once_then_503_with_retry_after(job):
    stages = [StandInStage(ActorDiedError()), *(StandInStage() for _ in range(4))]
    with pytest.raises(StageUnavailableError) as error:
        asyncio.run(StageGraph(StageHandles(*stages), request_timeout_s=120).generate(job, [b"image"]))
    assert (error.value.code, error.value.http_status, error.value.retry_after_s) == ("stage_unavailable", 503, 5)
    started = [call for stage in stages for call in stage.calls]
    assert len(stages[0].calls) == 2 and len(started) == 2 and all(call.cancelled for call in started)


def test_a_stage_that_failed_on_a_dead_stage_s_result_is_a_503_too(job):
    """The layout stage resolving the preprocessor's result after that replica died: Ray wraps the death once per
    stage it passed through."""
    died = RayTaskError("__call__", "Traceback…", RayTaskError("__call__", "Traceback…", ActorDiedError()))
    stages = [StandInStage(died), *(StandInStage() for _ in range(4))]
    with pytest.raises(StageUnavailableError):
        asyncio.run(StageGraph(StageHandles(*stages), request_timeout_s=120).generate(job, [b"image"]))
    assert len(stages[0].calls) == 2  # retried once, as a stage that died itself


def test_a_call_serve_could_not_send_because_its_argument_died_is_a_503_too(job):
    """Serve's router resolving a stage's argument (in a rehearsal: the layout's, the preprocessor's result) after
    the replica that made it died: a RayServeException caused by the ActorDiedError, which the call's cancel raises
    again (it was a 500)."""
    unrouted = RayServeException("Request to deployment failed because an upstream actor died")
    unrouted.__cause__ = ActorDiedError()
    stages = [StandInStage(unrouted, UnroutedCall), *(StandInStage() for _ in range(4))]
    with pytest.raises(StageUnavailableError):
        asyncio.run(StageGraph(StageHandles(*stages), request_timeout_s=120).generate(job, [b"image"]))
    assert len(stages[0].calls) == 2  # retried once


def test_a_lora_check_over_the_timeout_is_408_and_cancelled():
    stages = [StandInStage() for _ in range(5)]
    with pytest.raises(RequestTimeoutError) as error:
        asyncio.run(StageGraph(StageHandles(*stages), request_timeout_s=0.2).validate_lora(b"lora"))
    assert (error.value.code, error.value.http_status) == ("timeout", 408)
    assert len(stages[1].calls) == 1 and stages[1].calls[0].cancelled


def test_the_ingress_class_serves_its_app_over_any_handles(styles_dir, tmp_path):
    stages = [StandInStage() for _ in range(5)]
    args = PortraitAppArgs(styles_dir=str(styles_dir), request_timeout_s=0.2, jobs_store=f"sqlite:///{tmp_path}/j.db")
    ingress = PortraitIngress(*stages, args)

    async def answers() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=ingress.__serve_build_asgi_app__())
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as client:
            return [
                await client.get("/healthz"),
                await client.get("/v1/styles"),
                await client.post("/v1/portraits", files={"image": ("face.png", b"png")}, data={"style": "film-noir"}),
            ]

    health, styles, portrait = asyncio.run(answers())
    assert health.json() == {"status": "ok"}
    assert {style["id"] for style in styles.json()} == {"film-noir", "summer-beach", "xmas-sweater"}
    assert portrait.status_code == 408 and portrait.json()["error"]["code"] == "timeout"
    assert len(stages[0].calls) == 1 and stages[0].calls[0].cancelled
