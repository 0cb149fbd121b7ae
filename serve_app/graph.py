"""The stage graph as the ingress drives it: the five deployment handles and one request's way through them.

Every stage call streams progress events, then ``Finished``, then its result (``deployments.stream``). The
ingress reads the events and passes the result's object ref on, unread, to the next stage, so intermediates go
replica to replica; it reads only the last stage's result, the response. Streamed results are owned by the
ingress, so they stay readable when the replica that made them is removed (autoscaling, a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ray import ObjectRef, ObjectRefGenerator
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.stream import EncodedPortrait, Finished, PortraitJob, Step
from serve_app.errors import RequestTimeoutError, StageUnavailableError, documented_error
from serve_app.pipeline.lora_validation import LoraSummary
from serve_app.pipeline.stages import Stage

logger = logging.getLogger("ray.serve")

Emit = Callable[[str, dict], Awaitable[None]]


@dataclass
class GraphResult:
    portraits: list[EncodedPortrait] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    lora_cache: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageHandles:
    preprocessor: DeploymentHandle
    layout_generator: DeploymentHandle
    blend_sampler: DeploymentHandle
    fusion_ranker: DeploymentHandle
    upscaler: DeploymentHandle


class StageGraph:
    def __init__(self, handles: StageHandles, request_timeout_s: float) -> None:
        self.handles = handles
        self.request_timeout_s = request_timeout_s

    async def validate_lora(self, data: bytes) -> LoraSummary:
        """An uploaded style LoRA checked on a layout replica's base model (dry-run load included), within the
        request timeout: a replica that never answers would otherwise hold the curator's upload for good."""
        call = self.handles.layout_generator.validate_lora.remote(data)
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return await call
        except TimeoutError:
            call.cancel()
            raise RequestTimeoutError(f"checking the LoRA took over {self.request_timeout_s:g} s") from None

    async def generate(self, job: PortraitJob, images: Sequence[bytes], emit: Emit | None = None) -> GraphResult:
        """The request through every stage within the request timeout. A stage that dies mid-request (Serve
        restarts it) costs one transparent retry: the job's seeds are fixed, so the retry returns what the first
        try would have."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        try:
            return await self._attempt(job, images, emit, deadline)
        except StageUnavailableError as error:
            logger.warning("portrait %s: %s; retrying once", job.request_id, error.code)
            if emit is not None:
                await emit("retry", {"reason": error.code})
            return await self._attempt(job, images, emit, deadline)

    async def _attempt(
        self, job: PortraitJob, images: Sequence[bytes], emit: Emit | None, deadline: float
    ) -> GraphResult:
        run = GraphRun(self.handles, job, emit)
        try:
            async with asyncio.timeout_at(deadline):
                return await run.through_stages(images)
        except BaseException as exception:
            run.cancel()
            if isinstance(exception, TimeoutError):
                raise RequestTimeoutError(f"the request took over {self.request_timeout_s:g} s") from None
            error = documented_error(exception)
            if error is None:
                raise
            raise error from None


class GraphRun:
    """One attempt of one request: the calls it made (to cancel) and what their events said."""

    def __init__(self, handles: StageHandles, job: PortraitJob, emit: Emit | None) -> None:
        self.handles, self.job, self.emit = handles, job, emit
        self.calls: list[DeploymentResponseGenerator] = []
        self.result = GraphResult()

    async def through_stages(self, images: Sequence[bytes]) -> GraphResult:
        job, handles = self.job, self.handles
        style = {"multiplexed_model_id": job.style}
        # 1. Preprocess: decode, check and analyse each person's reference face
        references = await self._stage(Stage.PREPROCESS, handles.preprocessor, list(images))
        # 2. Layout: the style alone composes; a face mask per person and candidate
        layout = await self._stage(Stage.LAYOUT, handles.layout_generator.options(**style), references, job)
        # 3. Blend: each identity inside its masks, step by step
        candidates = await self._stage(Stage.BLEND, handles.blend_sampler.options(**style), layout)
        # 4. Fuse each person's reference face, score, keep the top K
        ranked = await self._stage(Stage.FUSION, handles.fusion_ranker, candidates, references, job)
        # 5. Upscale and encode: the only result the ingress reads
        self.result.portraits = await (await self._stage(Stage.UPSCALE, handles.upscaler, ranked, job))
        return self.result

    async def _stage(self, stage: Stage, handle: DeploymentHandle, *args) -> ObjectRef:
        """Call a stage, relay its events, and return its result's object ref, unread."""
        await self._event("stage_started", stage=stage)
        call = handle.options(stream=True).remote(*args)
        self.calls.append(call)
        items = await call._to_object_ref_gen()
        async for item in items:
            event = await item
            if isinstance(event, Step):
                await self._event("step", stage=event.stage, step=event.step, total=event.total)
            elif isinstance(event, Finished):
                self.result.timings[stage] = event.ms
                if event.lora_cache is not None:
                    self.result.lora_cache[stage] = event.lora_cache
                result = await next_unread(items)
                await self._event("stage_finished", stage=stage)
                return result
        raise RuntimeError(f"stage {stage} ended without a result")

    async def _event(self, name: str, **data) -> None:
        if self.emit is not None:
            await self.emit(name, data)

    def cancel(self) -> None:
        for call in self.calls:
            # Cancelling a call whose routing failed raises that failure again: the attempt's own error, handled.
            with contextlib.suppress(Exception):
                call.cancel()


async def next_unread(items: ObjectRefGenerator) -> ObjectRef:
    """The stream's next item, unread. Ray's ``__anext__`` fetches (and unpickles) an item that does not exist
    yet while it waits for it ("TODO: Avoid fetching the value" in ``ray._private.object_ref_generator``), which
    would load a stage's result, and the ML libraries its types import, into the ingress: wait until it exists
    without fetching (``ObjectRef._ready``, as Serve's own router does), then take it."""
    ref, ready = items.worker.core_worker.peek_object_ref_stream(items._generator_ref)
    if not ready:
        await ref._ready()
    return await items.__anext__()

