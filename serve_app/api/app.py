"""``create_app``: the FastAPI app of one ingress replica — the feature routers over its services, the two pages
and their assets, the admin token checked before any body is read, and every error answered as JSON."""

from __future__ import annotations

from serve_app.api import admin, health, pages, portraits, styles
from serve_app.api.dependencies import PortraitApp, Services
from serve_app.api.errors import install_error_handlers

DESCRIPTION = "Studio portraits in a chosen style that keep the identity of an avatar's face render."


def create_app(services: Services) -> PortraitApp:
    app = PortraitApp(services, title="Portrait Studio", version="0.1.0", description=DESCRIPTION)
    for feature in (portraits, styles, admin, health, pages):
        app.include_router(feature.router)
    app.mount("/static", pages.Assets(), name="static")
    app.add_middleware(admin.AdminTokenFirst)
    install_error_handlers(app)
    return app
