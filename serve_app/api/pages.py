"""The two pages the ingress serves, over the public and admin APIs only: ``/``, the studio (upload a render,
pick a style, watch the progress, compare the scored portraits with their layout masks), and ``/curator``, the
style curators' console. Their HTML (``serve_app/web/pages``), CSS and JavaScript (``serve_app/web/static``) are
package data: no build step, nothing from a CDN.

Every page and asset goes out with a strict Content-Security-Policy (scripts and styles from this origin only, no
inline script; the curator page holds an admin token) and ``Cache-Control: no-cache``: browsers revalidate
(assets by their ETag, a 304 when unchanged), so a new release is never mixed with a cached older script.
"""

from __future__ import annotations

import mimetypes
from importlib import resources

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from serve_app.api.dependencies import Settings
from serve_app.sample import sample_face
from serve_app.schemas import MAX_CANDIDATES
from serve_app.settings import PortraitAppArgs

PAGES = resources.files("serve_app").joinpath("web", "pages")
STATIC_PACKAGE = ("serve_app", "web/static")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)
# RFC 9239's type for scripts; Python 3.11's table (without the host's /etc/mime.types) says application/javascript.
mimetypes.add_type("text/javascript", ".js")


def page(name: str, settings: PortraitAppArgs) -> HTMLResponse:
    """A page with the API's limits filled in, so its client-side checks match the server's."""
    html = PAGES.joinpath(name).read_text(encoding="utf-8")
    html = html.replace("{{MAX_IMAGE_BYTES}}", str(settings.max_image_bytes))
    html = html.replace("{{MAX_CANDIDATES}}", str(MAX_CANDIDATES))
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/")
async def studio(settings: Settings) -> HTMLResponse:
    return page("studio.html", settings)


@router.get("/curator")
async def curator(settings: Settings) -> HTMLResponse:
    return page("curator.html", settings)


@router.get("/sample_face.png")
async def sample() -> Response:
    return Response(sample_face(), media_type="image/png", headers=PAGE_HEADERS)


class Assets(StaticFiles):
    """The pages' scripts and styles, with the pages' headers (content types and ETags from Starlette)."""

    def __init__(self) -> None:
        super().__init__(packages=[STATIC_PACKAGE])

    def file_response(self, *args, **kwargs) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response
