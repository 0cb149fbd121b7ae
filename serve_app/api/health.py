"""``GET /healthz``: the ingress answers (readiness of every stage is Serve's status, see the README)."""

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The ingress is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
