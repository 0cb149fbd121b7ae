"""``build_app``: the Serve application (the ``import_path`` of configs/serve*.yaml).

Stage classes stay undecorated; the builder applies each one's default deployment options here, and a Serve
config's ``deployments:`` entries (by name) override them — GPU fractions, replicas, autoscaling, queue limits.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from deployments.blend_sampler import BlendSampler
from deployments.fusion_ranker import FusionRanker
from deployments.layout_generator import LayoutGenerator
from deployments.preprocessor import Preprocessor
from deployments.upscaler import Upscaler
from serve_app.ingress import PortraitIngress
from serve_app.pipeline.models.weights import WeightsError, load_manifest, require_files
from serve_app.schemas import PortraitAppArgs
from serve_app.styles import StyleCatalog, StyleFolderError

logger = logging.getLogger("ray.serve")


def stage_options(max_ongoing_requests: int, max_replicas: int) -> dict[str, Any]:
    """CPU-safe defaults (no GPU requested); configs/serve.yaml sets the production GPU fractions."""
    return {
        "ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0},
        "max_ongoing_requests": max_ongoing_requests,
        "max_queued_requests": 64,
        "autoscaling_config": {
            "min_replicas": 1,
            "max_replicas": max_replicas,
            "target_ongoing_requests": max(1, max_ongoing_requests // 2),
        },
        "health_check_period_s": 10,
    }


DEFAULT_OPTIONS: dict[type, dict[str, Any]] = {
    Preprocessor: stage_options(max_ongoing_requests=8, max_replicas=4),
    LayoutGenerator: stage_options(max_ongoing_requests=16, max_replicas=4),
    BlendSampler: stage_options(max_ongoing_requests=16, max_replicas=4),
    FusionRanker: stage_options(max_ongoing_requests=8, max_replicas=4),
    Upscaler: stage_options(max_ongoing_requests=8, max_replicas=4),
    PortraitIngress: {**stage_options(max_ongoing_requests=256, max_replicas=2), "max_queued_requests": -1},
}


class PortraitConfigError(ValueError):
    """The application arguments are unusable; the message says which and why."""


def parse_args(args: dict[str, Any] | PortraitAppArgs) -> PortraitAppArgs:
    try:
        parsed = args if isinstance(args, PortraitAppArgs) else PortraitAppArgs.model_validate(args or {})
        StyleCatalog(parsed.styles_dir)
        if parsed.profile == "production":
            require_files(parsed.weights_dir, load_manifest(parsed.weights_manifest))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in error.errors())
        raise PortraitConfigError(f"invalid Portrait Studio app args: {problems}") from None
    except (StyleFolderError, WeightsError) as error:
        raise PortraitConfigError(f"invalid Portrait Studio app args: {error}") from None
    return parsed


def deployment(cls: type, name: str | None = None) -> serve.Deployment:
    return serve.deployment(cls, name=name or cls.__name__, **DEFAULT_OPTIONS[cls])


def build_app(args: dict[str, Any]) -> Application:
    """The five stage deployments behind the FastAPI ingress, from typed args (see ``PortraitAppArgs``)."""
    config = parse_args(args)
    logger.info("building Portrait Studio: %s", config.model_dump_json())
    stages = [deployment(cls).bind(config) for cls in (Preprocessor, LayoutGenerator, BlendSampler, FusionRanker, Upscaler)]
    return deployment(PortraitIngress).bind(*stages, config)
