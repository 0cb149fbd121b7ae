"""The ingress's request timeout, with stage handles that never answer: a JSON-mappable 408 and every stage call
cancelled. (Through HTTP it would need a second application with a tiny timeout beside the test app.)"""

from __future__ import annotations

import asyncio

import pytest

from deployments.staged import PortraitJob
from serve_app.ingress import PortraitIngress
from serve_app.pipeline.errors import RequestTimeoutError
from serve_app.schemas import PortraitAppArgs, PortraitOptions


class NeverAnswers:
    """A stand-in DeploymentResponse that never resolves and records its cancellation."""

    def __init__(self) -> None:
        self.cancelled = False

    def __await__(self):
        return asyncio.get_running_loop().create_future().__await__()

    def cancel(self) -> None:
        self.cancelled = True


class SilentStage:
    """A stand-in DeploymentHandle whose calls never answer."""

    def __init__(self) -> None:
        self.calls: list[NeverAnswers] = []

    def options(self, **_) -> SilentStage:
        return self

    def remote(self, *_) -> NeverAnswers:
        self.calls.append(NeverAnswers())
        return self.calls[-1]


def test_a_request_over_the_timeout_is_408_and_cancels_its_stages(styles_dir):
    plain_ingress = PortraitIngress.__mro__[1]  # the class under serve.ingress's wrapper
    stages = [SilentStage() for _ in range(5)]
    ingress = plain_ingress(*stages, PortraitAppArgs(styles_dir=str(styles_dir), request_timeout_s=0.2))
    job = PortraitJob(request_id="r1", style="film-noir@1", options=PortraitOptions(style="film-noir"), seed=1)
    with pytest.raises(RequestTimeoutError) as error:
        asyncio.run(ingress._run_with_timeout(job, b"image", emit=None))
    assert (error.value.code, error.value.http_status) == ("timeout", 408)
    started = [call for stage in stages for call in stage.calls]
    assert len(started) == 3 and all(call.cancelled for call in started)  # preprocess, layout, blend were chained
