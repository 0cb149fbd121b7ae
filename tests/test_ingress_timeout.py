"""The ingress's request timeout and its retry of a stage that died, with stand-in stage handles: a JSON-mappable
408 or 503 and every stage call cancelled. (Through HTTP: tests/reliability/ kills real replicas.)"""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError

from deployments.staged import PortraitJob
from serve_app.ingress import PortraitIngress
from serve_app.pipeline.errors import RequestTimeoutError, StageUnavailableError
from serve_app.schemas import PortraitAppArgs, PortraitOptions

JOB = PortraitJob(request_id="r1", style="film-noir@1", options=PortraitOptions(style="film-noir"), seed=1)


class StandInResponse:
    """A stand-in DeploymentResponse that never resolves, or raises ``error``; records its cancellation."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.cancelled = False

    def __await__(self):
        if self.error is not None:
            raise self.error
        return asyncio.get_running_loop().create_future().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class StandInStage:
    """A stand-in DeploymentHandle whose calls never answer, or fail with ``error``."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[StandInResponse] = []

    def options(self, **_) -> StandInStage:
        return self

    def remote(self, *_) -> StandInResponse:
        self.calls.append(StandInResponse(self.error))
        return self.calls[-1]


def ingress_over(stages: list[StandInStage], styles_dir, **args) -> PortraitIngress:
    plain_ingress = PortraitIngress.__mro__[1]  # the class under serve.ingress's wrapper
    return plain_ingress(*stages, PortraitAppArgs(styles_dir=str(styles_dir), **args))


def test_a_request_over_the_timeout_is_408_and_cancels_its_stages(styles_dir):
    stages = [StandInStage() for _ in range(5)]
    with pytest.raises(RequestTimeoutError) as error:
        asyncio.run(ingress_over(stages, styles_dir, request_timeout_s=0.2)._generate(JOB, b"image", emit=None))
    assert (error.value.code, error.value.http_status) == ("timeout", 408)
    started = [call for stage in stages for call in stage.calls]
    assert len(started) == 3 and all(call.cancelled for call in started)  # preprocess, layout, blend were chained


def test_a_stage_that_died_is_retried_once_then_503_with_retry_after(styles_dir):
    stages = [StandInStage(ActorDiedError()), *(StandInStage() for _ in range(4))]
    with pytest.raises(StageUnavailableError) as error:
        asyncio.run(ingress_over(stages, styles_dir)._generate(JOB, b"image", emit=None))
    assert (error.value.code, error.value.http_status, error.value.retry_after_s) == ("stage_unavailable", 503, 5)
    started = [call for stage in stages for call in stage.calls]
    assert len(stages[0].calls) == 2 and len(started) == 6 and all(call.cancelled for call in started)
