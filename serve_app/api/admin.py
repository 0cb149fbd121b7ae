"""Admin routes for style curators: publish, list, schedule, preview and retire styles, live.

Bearer token from ``STUDIO_ADMIN_TOKEN`` (compared in constant time); without it the routes answer 404
``admin_disabled``. An upload is checked in full — manifest, preview image, LoRA header, limits, target modules
and a dry-run load on the layout generator's base model — before the library changes, so a refused upload leaves
it as it was; its 422 names each field at fault (``manifest``, ``manifest.<path>``, ``lora``, ``preview``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, UploadFile
from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from deployments.stream import PortraitJob
from serve_app.api.dependencies import Admitting, Catalog, Graph, Settings, require_admin
from serve_app.api.errors import documented, field_errors, refuse
from serve_app.api.portraits import request_id_for
from serve_app.portrait_response import portrait_response
from serve_app.pipeline.errors import InvalidStyleError, PortraitError
from serve_app.portrait_request import portrait_request
from serve_app.sample import sample_face
from serve_app.schemas import PortraitOptions, PortraitResponse, PublishedStyle, StylePatch, StylePreviewRequest
from serve_app.styles.catalog import StyleStatus
from serve_app.styles.folder import PreviewImage, checked_preview
from serve_app.styles.manifest import (
    MAX_MANIFEST_BYTES,
    MAX_PREVIEW_BYTES,
    STYLE_ID_PATTERN,
    StyleFolderError,
    StyleManifest,
    parse_manifest,
)

PREFIX = "/admin"
StyleId = Annotated[str, Path(pattern=STYLE_ID_PATTERN, description="style id")]
# Every admin route: no or a wrong token (401, 403), admin switched off (404), a stage restarting (503).
ADMIN_ERRORS = (401, 403, 404, 503)

router = APIRouter(prefix=PREFIX, tags=["admin"], dependencies=[Depends(require_admin)])


class AdminTokenFirst:
    """ASGI middleware: an ``/admin`` request is authenticated from its headers before anything reads its body.
    FastAPI parses a form body before it runs a route's dependencies, so without this an unauthenticated upload
    would be received whole (and spooled) before its 401."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PREFIX + "/"):
            request = Request(scope)
            try:
                require_admin(request)
            except PortraitError as error:
                return await refuse(request, error)(scope, receive, send)
        await self.app(scope, receive, send)


# A preview is two candidates of the bundled sample face, the better one returned at the generated size.
PREVIEW_OPTIONS = {"num_candidates": 2, "top_k": 1, "upscale": 1}


async def read_limited(upload: UploadFile, limit: int, field: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise upload_error(field, f"the {field} file is over the limit of {limit} bytes")
    return data


def upload_error(field: str, message: str) -> InvalidStyleError:
    return InvalidStyleError(message, {field: message})


def manifest_of(data: bytes) -> StyleManifest:
    """The uploaded manifest; a 422 names each manifest field at fault (``manifest.<path>``), or ``manifest`` for
    a file that is not a manifest at all."""
    try:
        return parse_manifest(data, "manifest")
    except StyleFolderError as error:
        cause = error.__cause__
        if isinstance(cause, ValidationError):
            raise InvalidStyleError(str(error), field_errors(cause.errors(), "manifest")) from None
        raise upload_error("manifest", str(error)) from None


async def read_preview(preview: UploadFile | None, manifest: StyleManifest) -> PreviewImage | None:
    """The uploaded preview image, checked whole; required when the manifest names one."""
    if preview is None:
        if manifest.preview is not None:
            raise upload_error("preview", f"the manifest names the preview {manifest.preview!r}: upload it as 'preview'")
        return None
    data = await read_limited(preview, MAX_PREVIEW_BYTES, "preview")
    try:
        return await asyncio.to_thread(checked_preview, data)
    except StyleFolderError as error:
        raise upload_error("preview", str(error)) from None


@router.post(
    "/styles",
    status_code=201,
    response_model=PublishedStyle,
    responses=documented(*ADMIN_ERRORS, 400, 408, 422),
    summary="Publish a style or a new version",
)
async def publish_style(
    manifest: UploadFile,
    lora: UploadFile,
    settings: Settings,
    catalog: Catalog,
    graph: Graph,
    preview: UploadFile | None = None,
) -> PublishedStyle:
    """``manifest``: the style's YAML; ``lora``: its ``.safetensors`` LoRA; ``preview`` (optional): a PNG, JPEG or
    WebP image the studio's gallery shows."""
    parsed = await asyncio.to_thread(manifest_of, await read_limited(manifest, MAX_MANIFEST_BYTES, "manifest"))
    preview_image = await read_preview(preview, parsed)
    if not (lora.filename or "").endswith(".safetensors"):
        raise upload_error("lora", "the LoRA must be a .safetensors file")
    data = await read_limited(lora, settings.max_lora_bytes, "lora")
    summary = await graph.validate_lora(data)
    style = await asyncio.to_thread(catalog.publish, parsed, data, preview_image)
    return PublishedStyle(
        id=style.manifest.id,
        version=style.manifest.version,
        versioned_id=style.versioned_id,
        sha256=style.manifest.lora.sha256,
        lora_rank=summary.rank,
        lora_tensors=summary.tensors,
    )


@router.get(
    "/styles",
    response_model=list[StyleStatus],
    responses=documented(*ADMIN_ERRORS),
    summary="Every style with its status",
)
async def list_all_styles(catalog: Catalog) -> list[StyleStatus]:
    return catalog.statuses()


@router.patch(
    "/styles/{style_id}",
    response_model=StyleStatus,
    responses=documented(*ADMIN_ERRORS, 422),
    summary="Schedule window and default version",
)
async def update_style(style_id: StyleId, patch: StylePatch, catalog: Catalog) -> StyleStatus:
    await asyncio.to_thread(catalog.update_state, style_id, **patch.model_dump(include=patch.model_fields_set))
    return catalog.status(style_id)


@router.post(
    "/styles/{style_id}/preview",
    response_model=PortraitResponse,
    responses=documented(*ADMIN_ERRORS, 408, 409, 422),
    summary="A portrait of the bundled sample face in a version of a style, whatever its status",
)
async def preview_style(
    style_id: StyleId, preview: StylePreviewRequest, request: Request, catalog: Catalog, graph: Graph,
    admission: Admitting,
) -> PortraitResponse:
    version = preview.version or (await asyncio.to_thread(catalog.status, style_id)).default_version
    style = await asyncio.to_thread(catalog.version, f"{style_id}@{version}")
    options = PortraitOptions(style=style.versioned_id, seed=preview.seed, **PREVIEW_OPTIONS)
    job = PortraitJob(request_id_for(request), style.versioned_id, portrait_request(options, style.manifest, preview.seed))
    with admission.admitted():
        return portrait_response(job, await graph.generate(job, [sample_face()]))


@router.delete(
    "/styles/{style_id}", response_model=StyleStatus, responses=documented(*ADMIN_ERRORS, 422), summary="Retire a style"
)
async def retire_style(style_id: StyleId, catalog: Catalog) -> StyleStatus:
    """New requests get 410 ``style_retired``; requests already admitted finish."""
    await asyncio.to_thread(catalog.update_state, style_id, retired=True)
    return catalog.status(style_id)
