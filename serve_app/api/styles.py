"""``GET /v1/styles``: the styles clients can use now."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.api.dependencies import Catalog
from serve_app.api.errors import documented
from serve_app.schemas import StyleInfo

router = APIRouter(prefix="/v1", tags=["styles"])


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
        )
        for s in catalog.list()
    ]
