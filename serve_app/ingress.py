"""The ingress deployment: a plain class over the five stage handles whose FastAPI app (``serve_app.api``) is
built on the replica; ``build_app`` decorates it with ``serve.ingress()``. Its imports load no ML library."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray.serve.handle import DeploymentHandle

from deployments.logs import log_documented_errors_once
from deployments.metrics import InFlightGauges, JobMetrics
from deployments.options import stage_options
from serve_app.admission import Admission
from serve_app.api.app import create_app
from serve_app.api.dependencies import Services
from serve_app.graph import StageGraph, StageHandles
from serve_app.jobs.results import JobResults
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import open_job_store
from serve_app.jobs.webhooks import WebhookSender
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog


class PortraitIngress:
    @staticmethod
    def get_deployment_options() -> dict[str, Any]:
        # Chained stage calls skip Serve's queue limits: admission control (by count and cost) is the
        # backpressure.
        return {**stage_options(max_ongoing_requests=256, max_replicas=2), "max_queued_requests": -1}

    def __init__(
        self,
        preprocessor: DeploymentHandle,
        layout_generator: DeploymentHandle,
        blend_sampler: DeploymentHandle,
        fusion_ranker: DeploymentHandle,
        upscaler: DeploymentHandle,
        args: PortraitAppArgs,
    ) -> None:
        log_documented_errors_once()
        handles = StageHandles(preprocessor, layout_generator, blend_sampler, fusion_ranker, upscaler)
        catalog = StyleCatalog(args.styles_dir, refresh_s=args.styles_refresh_s, max_stale_s=args.styles_max_stale_s)
        graph = StageGraph(handles, args.request_timeout_s)
        admission = Admission(args.max_in_flight, args.max_cost_in_flight, args.max_request_cost, InFlightGauges().set)
        jobs, results = open_job_store(args.jobs_store), JobResults(args.job_results)
        job_metrics = JobMetrics()
        webhooks = WebhookSender(jobs, results, args, job_metrics.webhook)
        self.services = Services(
            settings=args,
            catalog=catalog,
            graph=graph,
            admission=admission,
            jobs=jobs,
            results=results,
            webhooks=webhooks,
            runner=JobRunner(jobs, results, webhooks, job_metrics, graph, admission, catalog, args),
        )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.services)
