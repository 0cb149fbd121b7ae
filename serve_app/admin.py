"""Admin routes for style curators: publish, list, schedule and retire styles, live.

Bearer token from ``STUDIO_ADMIN_TOKEN`` (compared in constant time); without it the routes answer 404
``admin_disabled``. An upload is checked in full — manifest, LoRA header, limits, target modules and a dry-run
load on the layout generator's base model — before the library changes, so a refused upload leaves it as it was.
"""

import asyncio
import hmac
import os
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, UploadFile

from serve_app.pipeline.errors import (
    AdminDisabledError,
    ForbiddenError,
    InvalidStyleError,
    UnauthorizedError,
)
from serve_app.schemas import PublishedStyle, StylePatch
from serve_app.styles import (
    MAX_MANIFEST_BYTES,
    STYLE_ID_PATTERN,
    StyleCatalog,
    StyleFolderError,
    StyleStatus,
    parse_manifest,
)

ADMIN_TOKEN_ENV = "STUDIO_ADMIN_TOKEN"
StyleId = Annotated[str, Path(pattern=STYLE_ID_PATTERN, description="style id")]


def require_admin(request: Request) -> None:
    expected = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not expected:
        raise AdminDisabledError(f"admin routes are disabled: set {ADMIN_TOKEN_ENV} on the service")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise UnauthorizedError("send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ForbiddenError("the admin token is wrong")


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


def catalog(request: Request) -> StyleCatalog:
    return request.app.state.ingress.catalog


async def read_limited(upload: UploadFile, limit: int, what: str) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise InvalidStyleError(f"{what} is over the limit of {limit} bytes")
    return data


@router.post("/styles", status_code=201, response_model=PublishedStyle, summary="Publish a style or a new version")
async def publish_style(request: Request, manifest: UploadFile, lora: UploadFile) -> PublishedStyle:
    ingress = request.app.state.ingress
    manifest_data = await read_limited(manifest, MAX_MANIFEST_BYTES, "the manifest")
    try:
        parsed = await asyncio.to_thread(parse_manifest, manifest_data, "manifest")
    except StyleFolderError as error:
        raise InvalidStyleError(str(error)) from None
    if not (lora.filename or "").endswith(".safetensors"):
        raise InvalidStyleError("the LoRA must be a .safetensors file")
    data = await read_limited(lora, ingress.args.max_lora_bytes, "the LoRA file")
    summary = await ingress.layout_generator.validate_lora.remote(data)
    style = await asyncio.to_thread(ingress.catalog.publish, parsed, data)
    return PublishedStyle(
        id=style.manifest.id,
        version=style.manifest.version,
        versioned_id=style.versioned_id,
        sha256=style.manifest.lora.sha256,
        lora_rank=summary.rank,
        lora_tensors=summary.tensors,
    )


@router.get("/styles", response_model=list[StyleStatus], summary="Every style with its status")
async def list_all_styles(request: Request) -> list[StyleStatus]:
    return catalog(request).statuses()


@router.patch("/styles/{style_id}", response_model=StyleStatus, summary="Schedule window and default version")
async def update_style(request: Request, style_id: StyleId, patch: StylePatch) -> StyleStatus:
    styles = catalog(request)
    await asyncio.to_thread(styles.update_state, style_id, **patch.model_dump(include=patch.model_fields_set))
    return styles.status(style_id)


@router.delete("/styles/{style_id}", response_model=StyleStatus, summary="Retire a style")
async def retire_style(request: Request, style_id: StyleId) -> StyleStatus:
    """New requests get 410 ``style_retired``; requests already admitted finish."""
    styles = catalog(request)
    await asyncio.to_thread(styles.update_state, style_id, retired=True)
    return styles.status(style_id)
