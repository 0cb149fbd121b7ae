"""The HTTP ingress: FastAPI routes over the five stage deployments.

``POST /v1/portraits`` chains the stages with ``DeploymentHandle``s, handing each stage's ``DeploymentResponse``
straight to the next, so images travel replica to replica; the ingress awaits each result only to report
progress. Bad input is refused here or in the preprocessor with a JSON error; the ingress also does admission
control (Serve's own queue limits are skipped by chained calls) and the request timeout.
"""


import asyncio
import base64
import binascii
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.logs import log_documented_errors_once
from deployments.metrics import in_flight_gauge
from deployments.staged import PortraitJob
from serve_app.admin import require_admin
from serve_app.admin import router as admin_router
from serve_app.pipeline.errors import (
    ImageTooLargeError,
    InvalidImageError,
    InvalidParameterError,
    MalformedBodyError,
    OverloadedError,
    PortraitError,
    RequestTimeoutError,
    StageUnavailableError,
    UnsupportedMediaTypeError,
)
from serve_app.pipeline.portrait import resolve_seed
from serve_app.schemas import (
    ErrorResponse,
    GeneratedPortrait,
    PortraitAppArgs,
    PortraitJSONRequest,
    PortraitOptions,
    PortraitResponse,
    StyleInfo,
)
from serve_app.styles import StyleCatalog

logger = logging.getLogger("ray.serve")

# Uploads stay in memory (never spooled to a temporary file on disk): user images are not written anywhere.
MultiPartParser.spool_max_size = 128 * 1024 * 1024
BASE64_OVERHEAD = 4 / 3
ENVELOPE_BYTES = 64 * 1024
# A stage replica that died or cannot be reached (Serve restarts it), or an object it owned that died with it.
STAGE_UNAVAILABLE = (
    RayActorError, ObjectLostError, WorkerCrashedError, NodeDiedError, DeploymentUnavailableError,
    ReplicaUnavailableError,
)

Emit = Callable[[str, dict], Awaitable[None]]

ERRORS = {
    status: {"model": ErrorResponse}
    for status in (400, 404, 408, 409, 410, 413, 415, 422, 503)
}

app = FastAPI(
    title="Portrait Studio",
    version="0.1.0",
    description="Studio portraits in a chosen style that keep the identity of an avatar's face render.",
)
app.include_router(admin_router)


class InternalError(PortraitError):
    """A fault of the service: a JSON 500, or an in-band error event on a stream."""

    code = "internal_error"
    http_status = 500


def error_response(error: PortraitError) -> JSONResponse:
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


def documented_error(exception: BaseException) -> PortraitError | None:
    """The documented error behind an exception, also when a stage raised it (Ray wraps those); None for a
    fault of the service."""
    if isinstance(exception, RayTaskError):
        exception = exception.cause
    if isinstance(exception, PortraitError):
        return exception
    if isinstance(exception, BackPressureError):
        return OverloadedError("the service is at capacity; retry shortly")
    if isinstance(exception, STAGE_UNAVAILABLE):
        return StageUnavailableError(
            "a stage of the service restarted while serving this request; retry it (the same seed gives the "
            "same portraits)"
        )
    return None


def log_refusal(request_id: str, error: PortraitError) -> None:
    """A documented error is one log line (no traceback): tracebacks are kept for faults of the service."""
    logger.info("request %s refused: %d %s", request_id, error.http_status, error.code)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.headers.get("x-request-id", "-")


def refuse(request: Request, error: PortraitError) -> JSONResponse:
    log_refusal(request_id_of(request), error)
    return error_response(error)


class AdminTokenFirst:
    """ASGI middleware: an ``/admin`` request is authenticated from its headers before anything reads its body.
    FastAPI parses a form body before it runs a route's dependencies, so without this an unauthenticated upload
    would be received whole (and spooled) before its 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(admin_router.prefix + "/"):
            request = Request(scope)
            try:
                require_admin(request)
            except PortraitError as error:
                return await refuse(request, error)(scope, receive, send)
        await self.app(scope, receive, send)


app.add_middleware(AdminTokenFirst)


@app.exception_handler(PortraitError)
async def _portrait_error(request: Request, error: PortraitError) -> JSONResponse:
    return refuse(request, error)


@app.exception_handler(RayError)
async def _ray_error(request: Request, error: RayError) -> JSONResponse:
    """A documented error raised inside a stage (e.g. a refused LoRA in a dry-run load) or a stage that became
    unavailable keeps its JSON answer; anything else is a fault (answered by ``_internal_error``)."""
    found = documented_error(error)
    if found is None:
        raise error
    return refuse(request, found)


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    return refuse(request, InvalidParameterError(_validation_message(error.errors())))


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    body = {"error": {"code": "http_" + str(error.status_code), "message": str(error.detail)}}
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


@app.exception_handler(Exception)
async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A fault of the service still answers JSON; Starlette re-raises it afterwards, so Serve logs its
    traceback (with the request id) once."""
    return error_response(InternalError(f"internal error; request id {request_id_of(request)}"))


def _validation_message(errors: list) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors)


async def read_portrait_request(request: Request, max_image_bytes: int) -> tuple[bytes, PortraitOptions]:
    """The image and the options of a multipart or JSON portrait request, size-checked before reading."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_image_bytes * BASE64_OVERHEAD + ENVELOPE_BYTES:
        raise ImageTooLargeError(f"request body is {declared} bytes; images are limited to {max_image_bytes} bytes")
    if media_type == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except StarletteHTTPException as error:  # what Starlette makes of a multipart parse error
            raise MalformedBodyError(f"the multipart body cannot be parsed: {error.detail}") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidParameterError("multipart requests need the image as a file field named 'image'")
        image = await upload.read()
        fields = {key: value for key, value in form.multi_items() if key != "image"}
    elif media_type == "application/json":
        try:
            fields = json.loads(await request.body())
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deep to parse
            raise InvalidParameterError(f"the body is not valid UTF-8 JSON: {error}") from None
        try:
            body = PortraitJSONRequest.model_validate(fields)
        except ValidationError as error:
            raise InvalidParameterError(_validation_message(error.errors())) from None
        try:
            image = base64.b64decode(body.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError("image_base64 is not valid base64") from None
        fields = body.model_dump(exclude={"image_base64"})
    else:
        raise UnsupportedMediaTypeError("send multipart/form-data (field 'image') or application/json (image_base64)")
    if len(image) > max_image_bytes:
        raise ImageTooLargeError(f"image is {len(image)} bytes; the limit is {max_image_bytes} bytes")
    try:
        return image, PortraitOptions.model_validate(fields)
    except ValidationError as error:
        raise InvalidParameterError(_validation_message(error.errors())) from None


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


PORTRAIT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "style"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        **PortraitOptions.model_json_schema()["properties"],
                    },
                }
            },
            "application/json": {"schema": PortraitJSONRequest.model_json_schema()},
        },
    },
    "responses": {"200": {"content": {"text/event-stream": {"schema": {"type": "string"}}}}},
}


@serve.ingress(app)
class PortraitIngress:
    def __init__(
        self,
        preprocessor: DeploymentHandle,
        layout_generator: DeploymentHandle,
        blend_sampler: DeploymentHandle,
        fusion_ranker: DeploymentHandle,
        upscaler: DeploymentHandle,
        args: PortraitAppArgs,
    ) -> None:
        self.preprocessor, self.layout_generator = preprocessor, layout_generator
        self.blend_sampler, self.fusion_ranker, self.upscaler = blend_sampler, fusion_ranker, upscaler
        log_documented_errors_once()
        self.args = args
        self.catalog = StyleCatalog(args.styles_dir)
        app.state.ingress = self  # the admin router reaches the catalog and the handles through it
        self.in_flight = 0
        self.in_flight_gauge = in_flight_gauge()

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/styles", response_model=list[StyleInfo])
    async def list_styles(self) -> list[StyleInfo]:
        return [
            StyleInfo(
                id=s.manifest.id,
                version=s.manifest.version,
                versioned_id=s.versioned_id,
                title=s.manifest.title,
                description=s.manifest.description,
                tags=s.manifest.tags,
                defaults=s.manifest.defaults.model_dump(),
            )
            for s in self.catalog.list()
        ]

    @app.post(
        "/v1/portraits",
        response_model=PortraitResponse,
        responses=ERRORS,
        openapi_extra=PORTRAIT_BODY,
        summary="Generate K portraits of the face in an image, in a style",
    )
    async def create_portrait(self, request: Request):
        image, options = await read_portrait_request(request, self.args.max_image_bytes)
        style = self.catalog.get(options.style)
        seed = resolve_seed(options)
        # Serve's proxy assigns (or keeps the client's) x-request-id and echoes it as the X-Request-ID header.
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        job = PortraitJob(request_id=request_id, style=style.versioned_id, options=options, seed=seed)
        logger.info("portrait %s: style %s, %d bytes, N=%d K=%d", job.request_id, job.style, len(image),
                    options.num_candidates, options.top_k)
        if "text/event-stream" in request.headers.get("accept", ""):
            self._check_capacity()  # an overloaded stream request gets a 503 too, before the stream starts
            return StreamingResponse(self._event_stream(job, image), media_type="text/event-stream")
        self._admit()
        try:
            result = await self._generate(job, image, emit=None)
        finally:
            self._release()
        return JSONResponse(result.model_dump())

    def _check_capacity(self) -> None:
        if self.in_flight >= self.args.max_in_flight:
            raise OverloadedError(f"{self.in_flight} requests are in progress; retry shortly")

    def _admit(self) -> None:
        self._check_capacity()
        self.in_flight += 1
        self.in_flight_gauge.set(self.in_flight)

    def _release(self) -> None:
        self.in_flight -= 1
        self.in_flight_gauge.set(self.in_flight)

    async def _event_stream(self, job: PortraitJob, image: bytes) -> AsyncIterator[str]:
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def emit(event: str, data: dict) -> None:
            await queue.put(sse(event, data))

        async def produce() -> None:
            try:
                self._admit()
            except OverloadedError as error:
                await emit("error", error.to_dict())
                await queue.put(None)
                return
            try:
                result = await self._generate(job, image, emit)
                await emit("result", result.model_dump())
            except Exception as exception:  # headers are sent: errors go in-band
                error = documented_error(exception)
                if error is None:
                    logger.exception("portrait %s failed", job.request_id)
                    error = InternalError(f"internal error; request id {job.request_id}")
                else:
                    log_refusal(job.request_id, error)
                await emit("error", error.to_dict())
            finally:
                self._release()
                await queue.put(None)

        producer = asyncio.create_task(produce())
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
        finally:
            producer.cancel()

    async def _generate(self, job: PortraitJob, image: bytes, emit: Emit | None) -> PortraitResponse:
        """The stage chain within the request timeout. A stage that dies mid-request (Serve restarts it) costs
        one transparent retry: the job's seed is fixed, so the retry returns what the first try would have."""
        deadline = asyncio.get_running_loop().time() + self.args.request_timeout_s
        try:
            return await self._attempt(job, image, emit, deadline)
        except StageUnavailableError as error:
            logger.warning("portrait %s: %s; retrying once", job.request_id, error.code)
            if emit is not None:
                await emit("retry", {"reason": error.code})
            return await self._attempt(job, image, emit, deadline)

    async def _attempt(self, job: PortraitJob, image: bytes, emit: Emit | None, deadline: float) -> PortraitResponse:
        responses: list[DeploymentResponse] = []
        try:
            async with asyncio.timeout_at(deadline):
                return await self._run(job, image, emit, responses)
        except BaseException as exception:
            for response in responses:
                response.cancel()
            if isinstance(exception, TimeoutError):
                raise RequestTimeoutError(f"the request took over {self.args.request_timeout_s:g} s") from None
            error = documented_error(exception)
            if error is None:
                raise
            raise error from None

    async def _run(
        self, job: PortraitJob, image: bytes, emit: Emit | None, responses: list[DeploymentResponse]
    ) -> PortraitResponse:
        async def event(name: str, **data) -> None:
            if emit is not None:
                await emit(name, data)

        diffusion = {"multiplexed_model_id": job.style}
        await event("stage_started", stage="preprocess")
        reference = self.preprocessor.remote(image)
        layout = self.layout_generator.options(**diffusion).remote(reference, job)
        steps = self.blend_sampler.options(stream=True, **diffusion).remote(layout)
        responses += [reference, layout, steps]
        await reference
        await event("stage_finished", stage="preprocess")
        await event("stage_started", stage="layout")
        layout_cache = (await layout).value.lora_cache
        await event("stage_finished", stage="layout")
        await event("stage_started", stage="blend")
        async for item in steps:
            if isinstance(item, dict):
                await event(item.pop("event"), **item)
            else:
                blended = item
        await event("stage_finished", stage="blend")
        await event("stage_started", stage="fusion")
        ranked = self.fusion_ranker.remote(blended.candidates, reference, job)
        upscaled = self.upscaler.remote(ranked, job)
        responses += [ranked, upscaled]
        await ranked
        await event("stage_finished", stage="fusion")
        await event("stage_started", stage="upscale")
        result = await upscaled
        await event("stage_finished", stage="upscale")
        return PortraitResponse(
            request_id=job.request_id,
            style=job.style,
            seed=job.seed,
            images=[
                GeneratedPortrait(image_base64=base64.b64encode(p.png).decode("ascii"), **p.info.model_dump())
                for p in result.value
            ],
            timings=result.timings,
            lora_cache={"layout": layout_cache, "blend": blended.lora_cache},
        )
