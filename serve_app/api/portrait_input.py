"""Reading a portrait request's body, multipart (``PortraitForm``: the options as fields, the image as a file) or
JSON (``PortraitJSONRequest``: the image as base64), size-checked and validated into a ``PortraitInput``: what
``POST /v1/portraits`` takes, and ``POST /v1/jobs`` with a webhook besides (``JobForm``, ``JobJSONRequest``).
FastAPI declares one body type per route, so the routes read the body themselves by its content type; a
``BodyModels``' ``openapi`` is its OpenAPI description, the two models' schemas."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

from serve_app.api.errors import invalid_parameters
from serve_app.errors import MalformedBodyError, UnsupportedMediaTypeError
from serve_app.pipeline.errors import ImageTooLargeError, InvalidImageError, InvalidParameterError
from serve_app.schemas import (
    JobForm,
    JobJSONRequest,
    PortraitForm,
    PortraitJSONRequest,
    PortraitOptions,
    WebhookField,
)

# Uploads stay in memory (never spooled to a temporary file on disk): user images are not written anywhere.
MultiPartParser.spool_max_size = 128 * 1024 * 1024
BASE64_OVERHEAD = 4 / 3
ENVELOPE_BYTES = 64 * 1024

Body = TypeVar("Body", PortraitForm, PortraitJSONRequest)


@dataclass(frozen=True)
class BodyModels:
    """The models of a route's body, multipart and JSON."""

    form: type[PortraitForm]
    json: type[PortraitJSONRequest]

    @property
    def openapi(self) -> dict:
        return {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": self.form.model_json_schema()},
                "application/json": {"schema": self.json.model_json_schema()},
            },
        }


PORTRAIT_BODY = BodyModels(PortraitForm, PortraitJSONRequest)
JOB_BODY = BodyModels(JobForm, JobJSONRequest)


@dataclass(frozen=True)
class PortraitInput:
    image: bytes
    options: PortraitOptions  # a PortraitForm or PortraitJSONRequest, read as its options
    webhook: str | None = None


async def read_portrait_input(
    request: Request, max_image_bytes: int, models: BodyModels = PORTRAIT_BODY
) -> PortraitInput:
    """The image and the options of a multipart or JSON portrait request, size-checked before reading."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_image_bytes * BASE64_OVERHEAD + ENVELOPE_BYTES:
        raise ImageTooLargeError(f"request body is {declared} bytes; images are limited to {max_image_bytes} bytes")
    if media_type == "multipart/form-data":
        body = await read_form(request, models.form)
        image = await body.image.read()
    elif media_type == "application/json":
        body = await read_json(request, models.json)
        try:
            image = base64.b64decode(body.image_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidImageError("image_base64 is not valid base64") from None
    else:
        raise UnsupportedMediaTypeError("send multipart/form-data (field 'image') or application/json (image_base64)")
    if len(image) > max_image_bytes:
        raise ImageTooLargeError(f"image is {len(image)} bytes; the limit is {max_image_bytes} bytes")
    return PortraitInput(image, body, body.webhook if isinstance(body, WebhookField) else None)


async def read_form(request: Request, model: type[PortraitForm]) -> PortraitForm:
    try:
        form = await request.form(max_files=1, max_fields=16)
    except StarletteHTTPException as error:  # what Starlette makes of a multipart parse error
        raise MalformedBodyError(f"the multipart body cannot be parsed: {error.detail}") from None
    if not isinstance(form.get("image"), UploadFile):
        raise InvalidParameterError(
            "multipart requests need the image as a file field named 'image'", {"image": "choose an image file"}
        )
    return validated(model, dict(form.multi_items()))


async def read_json(request: Request, model: type[PortraitJSONRequest]) -> PortraitJSONRequest:
    try:
        fields = json.loads(await request.body())
    except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested too deep to parse
        raise InvalidParameterError(f"the body is not valid UTF-8 JSON: {error}") from None
    return validated(model, fields)


def validated(model: type[Body], fields: object) -> Body:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise invalid_parameters(error.errors()) from None
