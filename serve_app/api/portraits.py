"""``POST /v1/portraits``: K portraits of the face in an image, in a style — as JSON, or as a Server-Sent Events
stream of progress then the result (``Accept: text/event-stream``).

The body is multipart (``PortraitForm``: the options as fields, the image as a file) or JSON
(``PortraitJSONRequest``: the image as base64). FastAPI declares one body type per route, so the route reads the
body itself by its content type and validates it with those models; the OpenAPI request body is their schemas.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from deployments.stream import PortraitJob
from serve_app.admission import Admission
from serve_app.api.dependencies import Admitting, Catalog, Graph, Settings
from serve_app.api.errors import documented, invalid_parameters, log_refusal
from serve_app.errors import InternalError, MalformedBodyError, UnsupportedMediaTypeError, documented_error
from serve_app.graph import GraphResult, StageGraph
from serve_app.pipeline.errors import ImageTooLargeError, InvalidImageError, InvalidParameterError
from serve_app.pipeline.stages import STAGES
from serve_app.portrait_request import portrait_request, resolve_seed
from serve_app.schemas import GeneratedPortrait, PortraitForm, PortraitJSONRequest, PortraitOptions, PortraitResponse

logger = logging.getLogger("ray.serve")

# Uploads stay in memory (never spooled to a temporary file on disk): user images are not written anywhere.
MultiPartParser.spool_max_size = 128 * 1024 * 1024
BASE64_OVERHEAD = 4 / 3
ENVELOPE_BYTES = 64 * 1024

router = APIRouter(prefix="/v1", tags=["portraits"])

REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": PortraitForm.model_json_schema()},
        "application/json": {"schema": PortraitJSONRequest.model_json_schema()},
    },
}
Body = TypeVar("Body", PortraitForm, PortraitJSONRequest)


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


@dataclass(frozen=True)
class PortraitInput:
    image: bytes
    options: PortraitOptions  # a PortraitForm or PortraitJSONRequest, read as its options


@router.post(
    "/portraits",
    response_model=PortraitResponse,
    responses={200: {"content": STREAM}, **documented(400, 404, 408, 409, 410, 413, 415, 422, 503)},
    openapi_extra={"requestBody": REQUEST_BODY},
    summary="Generate K portraits of the face in an image, in a style",
)
async def create_portrait(
    request: Request, settings: Settings, catalog: Catalog, graph: Graph, admission: Admitting
) -> PortraitResponse | StreamingResponse:
    # 1. Read and check the body: the image and the options
    body = await read_portrait_input(request, settings.max_image_bytes)
    # 2. Resolve the style and the seed into the pipeline's request
    style = catalog.get(body.options.style)
    request_id = request_id_for(request)
    seed = resolve_seed(body.options)
    job = PortraitJob(
        request_id, style.versioned_id, portrait_request(body.options, style.manifest, seed), body.options.return_masks
    )
    cost = admission.cost(job.request)
    logger.info("portrait %s: style %s, %d bytes, N=%d K=%d, cost %.1f", request_id, job.style, len(body.image),
                body.options.num_candidates, body.options.top_k, cost)
    # 3. Run the stage graph, streaming its progress when asked to
    if "text/event-stream" in request.headers.get("accept", ""):
        admission.check(cost)  # an overloaded stream request gets a 503 too, before the stream starts
        return StreamingResponse(
            event_stream(graph, admission, job, cost, body.image), media_type="text/event-stream"
        )
    with admission.admitted(cost):
        return portrait_response(job, await graph.generate(job, body.image))


def request_id_for(request: Request) -> str:
    """Serve's proxy assigns (or keeps the client's) x-request-id and echoes it as the X-Request-ID header."""
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return request.state.request_id


def portrait_response(job: PortraitJob, result: GraphResult) -> PortraitResponse:
    return PortraitResponse(
        request_id=job.request_id,
        style=job.style,
        seed=job.request.seeds[0],
        images=[
            GeneratedPortrait(
                image_base64=base64_text(p.png),
                layout_mask_base64=None if p.mask_png is None else base64_text(p.mask_png),
                **p.info.model_dump(),
            )
            for p in result.portraits
        ],
        timings=result.timings,
        lora_cache=result.lora_cache,
    )


def base64_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def read_portrait_input(request: Request, max_image_bytes: int) -> PortraitInput:
    """The image and the options of a multipart or JSON portrait request, size-checked before reading."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_image_bytes * BASE64_OVERHEAD + ENVELOPE_BYTES:
        raise ImageTooLargeError(f"request body is {declared} bytes; images are limited to {max_image_bytes} bytes")
    if media_type == "multipart/form-data":
        body = await read_form(request)
        image = await body.image.read()
    elif media_type == "application/json":
        body = await read_json(request)
        try:
            image = base64.b64decode(body.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError("image_base64 is not valid base64") from None
    else:
        raise UnsupportedMediaTypeError("send multipart/form-data (field 'image') or application/json (image_base64)")
    if len(image) > max_image_bytes:
        raise ImageTooLargeError(f"image is {len(image)} bytes; the limit is {max_image_bytes} bytes")
    return PortraitInput(image, body)


async def read_form(request: Request) -> PortraitForm:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except StarletteHTTPException as error:  # what Starlette makes of a multipart parse error
        raise MalformedBodyError(f"the multipart body cannot be parsed: {error.detail}") from None
    if not isinstance(form.get("image"), UploadFile):
        raise InvalidParameterError(
            "multipart requests need the image as a file field named 'image'", {"image": "choose an image file"}
        )
    return validated(PortraitForm, dict(form.multi_items()))


async def read_json(request: Request) -> PortraitJSONRequest:
    try:
        fields = json.loads(await request.body())
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deep to parse
        raise InvalidParameterError(f"the body is not valid UTF-8 JSON: {error}") from None
    return validated(PortraitJSONRequest, fields)


def validated(model: type[Body], fields: object) -> Body:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise invalid_parameters(error.errors()) from None


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def event_stream(
    graph: StageGraph, admission: Admission, job: PortraitJob, cost: float, image: bytes
) -> AsyncIterator[str]:
    """Progress events, then ``result`` or ``error``: once the headers are sent, errors go in-band."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def emit(event: str, data: dict) -> None:
        await queue.put(sse(event, data))

    async def produce() -> None:
        try:
            with admission.admitted(cost):
                result = await graph.generate(job, image, emit)
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
