"""Admin routes for style curators: publish, list, schedule and retire styles, live.

Bearer token from ``STUDIO_ADMIN_TOKEN`` (compared in constant time); without it the routes answer 404
``admin_disabled``. An upload is checked in full — manifest, LoRA header, limits, target modules and a dry-run
load on the layout generator's base model — before the library changes, so a refused upload leaves it as it was.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, UploadFile
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.api.dependencies import Catalog, Graph, Settings, require_admin
from serve_app.api.errors import documented, refuse
from serve_app.pipeline.errors import InvalidStyleError, PortraitError
from serve_app.schemas import PublishedStyle, StylePatch
from serve_app.styles import MAX_MANIFEST_BYTES, STYLE_ID_PATTERN, StyleFolderError, StyleStatus, parse_manifest

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


async def read_limited(upload: UploadFile, limit: int, what: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise InvalidStyleError(f"{what} is over the limit of {limit} bytes")
    return data


@router.post(
    "/styles",
    status_code=201,
    response_model=PublishedStyle,
    responses=documented(*ADMIN_ERRORS, 400, 422),
    summary="Publish a style or a new version",
)
async def publish_style(
    manifest: UploadFile, lora: UploadFile, settings: Settings, catalog: Catalog, graph: Graph
) -> PublishedStyle:
    manifest_data = await read_limited(manifest, MAX_MANIFEST_BYTES, "the manifest")
    try:
        parsed = await asyncio.to_thread(parse_manifest, manifest_data, "manifest")
    except StyleFolderError as error:
        raise InvalidStyleError(str(error)) from None
    if not (lora.filename or "").endswith(".safetensors"):
        raise InvalidStyleError("the LoRA must be a .safetensors file")
    data = await read_limited(lora, settings.max_lora_bytes, "the LoRA file")
    summary = await graph.validate_lora(data)
    style = await asyncio.to_thread(catalog.publish, parsed, data)
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


@router.delete(
    "/styles/{style_id}", response_model=StyleStatus, responses=documented(*ADMIN_ERRORS, 422), summary="Retire a style"
)
async def retire_style(style_id: StyleId, catalog: Catalog) -> StyleStatus:
    """New requests get 410 ``style_retired``; requests already admitted finish."""
    await asyncio.to_thread(catalog.update_state, style_id, retired=True)
    return catalog.status(style_id)
