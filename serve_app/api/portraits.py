"""``POST /v1/portraits``: K portraits of the face in an image, in a style — as JSON, or as a Server-Sent Events
stream of progress then the result (``Accept: text/event-stream``), or queued as a job (``Prefer:
respond-async``). The body is read by ``serve_app.api.portrait_input``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from deployments.stream import PortraitJob
from serve_app.admission import Admission
from serve_app.api.dependencies import Admitting, Catalog, Graph, Settings, Studio
from serve_app.api.errors import documented, log_refusal
from serve_app.api.jobs import JOB_CREATED, submit_job
from serve_app.api.portrait_input import JOB_BODY, PORTRAIT_BODY, read_portrait_input
from serve_app.errors import InternalError, documented_error
from serve_app.graph import StageGraph
from serve_app.pipeline.stages import STAGES
from serve_app.portrait_request import portrait_request, resolve_seed
from serve_app.portrait_response import portrait_response
from serve_app.schemas import PortraitResponse

logger = logging.getLogger("ray.serve")

router = APIRouter(prefix="/v1", tags=["portraits"])

def sse_event(name: str, data: dict) -> dict:
    """One Server-Sent Event: its name and its data, a JSON document of schema ``data``."""
    payload = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {"type": "object", "properties": {"event": {"const": name}, "data": payload}, "required": ["event", "data"]}


def fields(**schemas: dict) -> dict:
    return {"type": "object", "properties": schemas, "required": list(schemas)}


STAGE = {"type": "string", "enum": [str(stage) for stage in STAGES]}
# Before OpenAPI 3.2 (``itemSchema``), the schema of an event stream is that of each of its events.
STREAM_EVENT = {
    "description": "stage_started, step (blend) and stage_finished per stage, retry if a stage restarted; "
    "then result or error",
    "oneOf": [
        sse_event("stage_started", fields(stage=STAGE)),
        sse_event("step", fields(stage=STAGE, step={"type": "integer"}, total={"type": "integer"})),
        sse_event("stage_finished", fields(stage=STAGE)),
        sse_event("retry", fields(reason={"type": "string"})),
        sse_event("result", {"$ref": "#/components/schemas/PortraitResponse"}),
        sse_event("error", {"$ref": "#/components/schemas/ErrorResponse"}),
    ],
}
STREAM = {"text/event-stream": {"schema": STREAM_EVENT}}


@router.post(
    "/portraits",
    response_model=PortraitResponse,
    responses={200: {"content": STREAM}, 202: JOB_CREATED, **documented(400, 404, 408, 409, 410, 413, 415, 422, 503)},
    openapi_extra={"requestBody": PORTRAIT_BODY.openapi},
    summary="Generate K portraits of the face in an image, in a style (Prefer: respond-async queues a job)",
)
async def create_portrait(
    request: Request, settings: Settings, catalog: Catalog, graph: Graph, admission: Admitting, studio: Studio
) -> PortraitResponse | StreamingResponse | JSONResponse:
    # 1. Read and check the body: the images (one per person) and the options
    queued = "respond-async" in request.headers.get("prefer", "")  # RFC 7240: the same request as a job
    body = await read_portrait_input(request, settings.max_image_bytes, JOB_BODY if queued else PORTRAIT_BODY)
    if queued:
        return await submit_job(request, body, studio)
    # 2. Resolve the style and the seed into the pipeline's request
    style = catalog.get(body.options.style)
    request_id = request_id_for(request)
    seed = resolve_seed(body.options)
    people = len(body.images)
    job = PortraitJob(
        request_id, style.versioned_id, portrait_request(body.options, style.manifest, seed, people),
        body.options.return_masks,
    )
    cost = admission.cost(job.request)
    logger.info("portrait %s: style %s, %d bytes, P=%d N=%d K=%d, cost %.1f", request_id, job.style,
                sum(map(len, body.images)), people, body.options.num_candidates, body.options.top_k, cost)
    # 3. Run the stage graph, streaming its progress when asked to
    if "text/event-stream" in request.headers.get("accept", ""):
        admission.check(cost)  # an overloaded stream request gets a 503 too, before the stream starts
        return StreamingResponse(
            event_stream(graph, admission, job, cost, body.images), media_type="text/event-stream"
        )
    with admission.admitted(cost):
        return portrait_response(job, await graph.generate(job, body.images))


def request_id_for(request: Request) -> str:
    """Serve's proxy assigns (or keeps the client's) x-request-id and echoes it as the X-Request-ID header."""
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return request.state.request_id


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(
    graph: StageGraph, admission: Admission, job: PortraitJob, cost: float, images: tuple[bytes, ...]
) -> AsyncIterator[str]:
    """Progress events, then ``result`` or ``error``: once the headers are sent, errors go in-band."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def emit(event: str, data: dict) -> None:
        await queue.put(sse(event, data))

    async def produce() -> None:
        try:
            with admission.admitted(cost):
                result = await graph.generate(job, images, emit)
            await emit("result", portrait_response(job, result).model_dump())
        except Exception as exception:
            error = documented_error(exception)
            if error is None:
                logger.exception("portrait %s failed", job.request_id)
                error = InternalError(f"internal error; request id {job.request_id}")
            else:
                log_refusal(job.request_id, error)
            await emit("error", error.to_dict())
        finally:
            await queue.put(None)

    producer = asyncio.create_task(produce())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
    finally:
        producer.cancel()
