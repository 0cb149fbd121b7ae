"""``create_app``: the FastAPI app of one ingress replica — the feature routers over its services, the two pages
and their assets, the API docs with theirs, the admin token checked before any body is read, and every error
answered as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from serve_app.api import admin, health, jobs, pages, portraits, styles
from serve_app.api.dependencies import Services
from serve_app.api.errors import install_error_handlers

DOCS_ASSETS = "/docs-assets"
DESCRIPTION = "Studio portraits in a chosen style that keep the identity of an avatar's face render."


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def running_jobs(_: FastAPI) -> AsyncIterator[None]:
        """While the app serves, its replica runs queued jobs too (Serve runs an ingress app's lifespan)."""
        runner = asyncio.create_task(services.runner.run_forever())
        try:
            yield
        finally:
            runner.cancel()
            await services.runner.stop()
            await services.webhooks.stop()
            await services.jobs.close()

    # /docs with Swagger UI served from here (fastapi-offline's copy), not a CDN; no /redoc: ReDoc's page fetches
    # its logo from redoc.ly whatever its options
    app = FastAPIOffline(
        title="Portrait Studio", version="0.1.0", description=DESCRIPTION, static_url=DOCS_ASSETS, redoc_url=None,
        lifespan=running_jobs,
    )
    app.state.services = services
    for feature in (portraits, jobs, styles, admin, health, pages):
        app.include_router(feature.router)
    app.webhooks.include_router(jobs.webhooks)
    app.mount("/static", pages.Assets(), name="static")
    app.add_middleware(admin.AdminTokenFirst)
    install_error_handlers(app)
    return app
