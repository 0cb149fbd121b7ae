"""``build_app``: the Serve application (the ``import_path`` of configs/serve*.yaml).

The builder validates the args first (``PortraitAppArgs``), then deploys each undecorated class with the default
options it states (``get_deployment_options``); a Serve config's ``deployments:`` entries, by class name,
override them — GPU fractions, replicas, autoscaling, queue limits.
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
from serve_app.pipeline.models.weights import WeightsError, check_profile_weights
from serve_app.settings import PortraitAppArgs
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import StyleFolderError

logger = logging.getLogger("ray.serve")

# In stage order: the deployments the ingress chains (and the names a config's deployments: entries use).
STAGE_DEPLOYMENTS = (Preprocessor, LayoutGenerator, BlendSampler, FusionRanker, Upscaler)


class PortraitConfigError(ValueError):
    """The application arguments are unusable; the message says which and why."""


def parse_args(args: dict[str, Any] | PortraitAppArgs) -> PortraitAppArgs:
    try:
        parsed = args if isinstance(args, PortraitAppArgs) else PortraitAppArgs.model_validate(args or {})
        StyleCatalog(parsed.styles_dir)
        check_profile_weights(parsed.model_settings())
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'args'}: {e['msg']}" for e in error.errors())
        raise PortraitConfigError(f"invalid Portrait Studio app args: {problems}") from None
    except (StyleFolderError, WeightsError) as error:
        raise PortraitConfigError(f"invalid Portrait Studio app args: {error}") from None
    return parsed


def deployment(cls: type, name: str) -> serve.Deployment:
    options = cls.get_deployment_options()
    logger.info("deployment %s defaults: %s", name, options)
    return serve.deployment(cls, name=name, **options)


def build_app(args: dict[str, Any]) -> Application:
    """The five stage deployments behind the FastAPI ingress, from typed args (see ``PortraitAppArgs``)."""
    config = parse_args(args)
    logger.info("building Portrait Studio: %s", config.model_dump_json())
    stages = [deployment(cls, cls.__name__).bind(config) for cls in STAGE_DEPLOYMENTS]
    ingress = serve.ingress()(PortraitIngress)
    return deployment(ingress, PortraitIngress.__name__).bind(*stages, config)
