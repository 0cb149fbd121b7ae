"""Reading a portrait request's body, multipart (``PortraitForm``: the options as fields, each person's image as a
file field ``image``, repeated) or JSON (``PortraitJSONRequest``: the image as base64, or the images as a list),
size-checked and validated into a ``PortraitInput``: what
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
from serve_app.pipeline.request import MAX_PEOPLE
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
MAX_FORM_FILES = 16  # parsed, so that up to this many images get a 422 naming the limit rather than a parse error

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
    images: tuple[bytes, ...]  # one per person, left to right
    options: PortraitOptions  # a PortraitForm or PortraitJSONRequest, read as its options
    webhook: str | None = None


async def read_portrait_input(
    request: Request, max_image_bytes: int, models: BodyModels = PORTRAIT_BODY
) -> PortraitInput:
    """The images and the options of a multipart or JSON portrait request, size-checked before reading."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    most = MAX_PEOPLE * max_image_bytes * BASE64_OVERHEAD + ENVELOPE_BYTES
    if declared and declared.isdigit() and int(declared) > most:
        raise ImageTooLargeError(
            f"request body is {declared} bytes; images are limited to {max_image_bytes} bytes each, "
            f"{MAX_PEOPLE} at most"
        )
    if media_type == "multipart/form-data":
        body, images = await read_form(request, models.form)
    elif media_type == "application/json":
        body = await read_json(request, models.json)
        images = tuple(decoded_base64(text, field) for field, text in body.sent_images())
    else:
        raise UnsupportedMediaTypeError(
            "send multipart/form-data (field 'image', once per person) or application/json (image_base64 or "
            "images_base64)"
        )
    for index, image in enumerate(images):
        if len(image) > max_image_bytes:
            name = "image" if len(images) == 1 else f"image {index + 1} of {len(images)}"
            raise ImageTooLargeError(f"{name} is {len(image)} bytes; the limit is {max_image_bytes} bytes")
    return PortraitInput(images, body, body.webhook if isinstance(body, WebhookField) else None)


def decoded_base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImageError(f"{field} is not valid base64") from None


async def read_form(request: Request, model: type[PortraitForm]) -> tuple[PortraitForm, tuple[bytes, ...]]:
    """The form's options and its images, in the order their fields came."""
    try:
        form = await request.form(max_files=MAX_FORM_FILES, max_fields=16)
    except StarletteHTTPException as error:  # what Starlette makes of a multipart parse error
        raise MalformedBodyError(f"the multipart body cannot be parsed: {error.detail}") from None
    files = form.getlist("image")
    if not files or not all(isinstance(file, UploadFile) for file in files):
        raise InvalidParameterError(
            "multipart requests need each person's image as a file field named 'image'",
            {"image": "choose an image file"},
        )
    if len(files) > MAX_PEOPLE:
        message = f"send 1 to {MAX_PEOPLE} face images, one per person; got {len(files)}"
        raise InvalidParameterError(message, {"image": message})
    if any(isinstance(value, UploadFile) for name, value in form.multi_items() if name != "image"):
        raise MalformedBodyError("only the 'image' fields of a multipart body may be files")
    body = validated(model, dict(form.multi_items()))
    return body, tuple([await file.read() for file in files])


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
