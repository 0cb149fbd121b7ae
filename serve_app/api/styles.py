"""``GET /v1/styles``: the styles clients can use now, and their preview images."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from serve_app.api.dependencies import Catalog
from serve_app.api.errors import documented
from serve_app.schemas import StyleInfo
from serve_app.styles.folder import Style
from serve_app.styles.manifest import PREVIEW_MEDIA_TYPES, STYLE_REF_PATTERN

router = APIRouter(prefix="/v1", tags=["styles"])
StyleRef = Annotated[str, Path(pattern=STYLE_REF_PATTERN, description="style id, or id@version")]
# A version never changes, so its preview can be cached for good; a bare id follows the default version.
VERSION_CACHE = "public, max-age=31536000, immutable"
DEFAULT_CACHE = "no-cache"


def preview_url(style: Style) -> str | None:
    return None if style.manifest.preview is None else f"{router.prefix}/styles/{style.versioned_id}/preview"


@router.get("/styles", response_model=list[StyleInfo], responses=documented(), summary="The styles live now")
async def list_styles(catalog: Catalog) -> list[StyleInfo]:
    return [
        StyleInfo(
            id=s.manifest.id,
            version=s.manifest.version,
            versioned_id=s.versioned_id,
            title=s.manifest.title,
            description=s.manifest.description,
            tags=s.manifest.tags,
            defaults=s.manifest.defaults.model_dump(),
            preview_url=preview_url(s),
        )
        for s in catalog.list()
    ]


@router.get(
    "/styles/{style}/preview",
    response_class=Response,
    responses={
        200: {"content": {media_type: {} for media_type in sorted(set(PREVIEW_MEDIA_TYPES.values()))}},
        **documented(404, 410),
    },
    summary="A live style's preview image (404 no_preview when it has none)",
)
async def style_preview(style: StyleRef, catalog: Catalog) -> Response:
    found = await asyncio.to_thread(catalog.get, style)
    image, media_type = await asyncio.to_thread(found.read_preview)
    cache = VERSION_CACHE if "@" in style else DEFAULT_CACHE
    return Response(image, media_type=media_type, headers={"Cache-Control": cache})
