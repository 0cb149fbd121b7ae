"""How the API answers what goes wrong: every documented error as its status and a JSON body
(``{"error": {"code", "message"}}``) with one log line per refusal; a fault of the service as a JSON 500 with the
request id, its traceback logged once."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.errors import InternalError, documented_error
from serve_app.pipeline.errors import InvalidParameterError, PortraitError
from serve_app.schemas import ErrorResponse

logger = logging.getLogger("ray.serve")


def documented(*statuses: int) -> dict[int | str, dict]:
    """The ``responses`` of a route that may answer these statuses with an error body (and 500, always)."""
    return {status: {"model": ErrorResponse} for status in (*statuses, 500)}


def error_response(error: PortraitError) -> JSONResponse:
    headers = None if error.retry_after_s is None else {"Retry-After": str(error.retry_after_s)}
    return JSONResponse(error.to_dict(), status_code=error.http_status, headers=headers)


def log_refusal(request_id: str, error: PortraitError) -> None:
    """A documented error is one log line (no traceback): tracebacks are kept for faults of the service."""
    logger.info("request %s refused: %d %s", request_id, error.http_status, error.code)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.headers.get("x-request-id", "-")


def refuse(request: Request, error: PortraitError) -> JSONResponse:
    log_refusal(request_id_of(request), error)
    return error_response(error)


def validation_message(errors: list) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors)


def field_errors(errors: list, within: str = "body") -> dict[str, str]:
    """Pydantic's errors by field: the dotted path of each inside ``within``; an error of the whole document is
    ``within``'s own."""
    fields: dict[str, str] = {}
    for error in errors:
        path = [str(part) for part in error.get("loc", ())]
        if within != "body":
            path = [within, *path]
        fields.setdefault(".".join(path) or within, str(error.get("msg")).removeprefix("Value error, "))
    return fields


def invalid_parameters(errors: list) -> InvalidParameterError:
    return InvalidParameterError(validation_message(errors), field_errors(errors))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(PortraitError, _portrait_error)
    app.add_exception_handler(RayError, _ray_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


async def _portrait_error(request: Request, error: PortraitError) -> JSONResponse:
    return refuse(request, error)


async def _ray_error(request: Request, error: RayError) -> JSONResponse:
    """A documented error raised inside a stage (e.g. a refused LoRA in a dry-run load) or a stage that became
    unavailable keeps its JSON answer; anything else is a fault (answered by ``_internal_error``)."""
    found = documented_error(error)
    if found is None:
        raise error
    return refuse(request, found)


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's locations start with the request part ('body', 'query', 'path'): the field is what follows."""
    return refuse(request, invalid_parameters([{**e, "loc": e.get("loc", ())[1:]} for e in error.errors()]))


async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    body = {"error": {"code": "http_" + str(error.status_code), "message": str(error.detail)}}
    return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))


async def _internal_error(request: Request, error: Exception) -> JSONResponse:
    """A fault of the service still answers JSON; Starlette re-raises it afterwards, so Serve logs its
    traceback (with the request id) once."""
    return error_response(InternalError(f"internal error; request id {request_id_of(request)}"))
