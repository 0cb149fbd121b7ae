"""What the routes depend on, as FastAPI dependencies: the services of the ingress replica that serves the request
(settings, style catalogue, stage graph, admission, jobs) and the admin token check."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serve_app.admission import Admission
from serve_app.errors import AdminDisabledError, ForbiddenError, UnauthorizedError
from serve_app.graph import StageGraph
from serve_app.jobs.results import JobResults
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import JobStore
from serve_app.jobs.webhooks import WebhookSender
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog

ADMIN_TOKEN_ENV = "STUDIO_ADMIN_TOKEN"


@dataclass(frozen=True)
class Services:
    settings: PortraitAppArgs
    catalog: StyleCatalog
    graph: StageGraph
    admission: Admission
    jobs: JobStore
    results: JobResults
    """Where finished jobs' portraits are kept."""
    webhooks: WebhookSender
    runner: JobRunner
    """Takes this replica's share of the queued jobs while the app runs (``create_app``'s lifespan)."""


def services(request: Request) -> Services:
    """The services ``create_app`` put in the app's state."""
    return request.app.state.services


def settings(request: Request) -> PortraitAppArgs:
    return services(request).settings


def catalog(request: Request) -> StyleCatalog:
    return services(request).catalog


def graph(request: Request) -> StageGraph:
    return services(request).graph


def admission(request: Request) -> Admission:
    return services(request).admission


def require_admin(request: Request) -> None:
    """The bearer token of ``STUDIO_ADMIN_TOKEN``, compared in constant time; without it admin is off (404)."""
    expected = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not expected:
        raise AdminDisabledError(f"admin routes are disabled: set {ADMIN_TOKEN_ENV} on the service")
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise UnauthorizedError("send the admin token as 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise ForbiddenError("the admin token is wrong")


Settings = Annotated[PortraitAppArgs, Depends(settings)]
Catalog = Annotated[StyleCatalog, Depends(catalog)]
Graph = Annotated[StageGraph, Depends(graph)]
Admitting = Annotated[Admission, Depends(admission)]
Studio = Annotated[Services, Depends(services)]
