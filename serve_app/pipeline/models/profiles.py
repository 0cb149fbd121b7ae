"""A profile's model source: ``tiny`` and ``full-size`` build in code (``sources``), ``production`` and
``commercial`` load a weights folder, ``tiny-commercial`` mixes (``commercial``). A commercial profile refuses,
before it builds anything, a manifest with a model not cleared for commercial use. The production and commercial
modules are imported only for their profiles, so a commercial process never imports insightface."""

from __future__ import annotations

from pathlib import Path

import torch

from serve_app.pipeline.models import full_size, tiny
from serve_app.pipeline.models.sources import ModelSource, RandomWeights
from serve_app.pipeline.models.weights import WeightsManifest, default_manifest, load_manifest, require_cleared
from serve_app.pipeline.models.weights_folder import CPU, WeightsFolder
from serve_app.pipeline.settings import COMMERCIAL_PROFILES, WEIGHTS_PROFILES, ModelSettings


def weights_folder(
    profile: str, folder: Path, manifest: WeightsManifest, device: torch.device = CPU, dtype: torch.dtype = torch.float32
) -> WeightsFolder:
    """The models of a weights folder of ``profile`` (production or commercial)."""
    if profile == "commercial":
        from serve_app.pipeline.models.commercial import CommercialWeights

        return CommercialWeights(folder, manifest, device, dtype)
    from serve_app.pipeline.models.production import ProductionWeights

    return ProductionWeights(folder, manifest, device, dtype)


def model_source(settings: ModelSettings, device: torch.device, dtype: torch.dtype) -> ModelSource:
    if settings.profile in COMMERCIAL_PROFILES + WEIGHTS_PROFILES:
        manifest = load_manifest(settings.weights_manifest or default_manifest(settings.profile))
        require_cleared(manifest, settings.profile)
        if settings.profile == "tiny-commercial":
            from serve_app.pipeline.models.commercial import TinyCommercial

            return TinyCommercial(manifest, device, dtype)
        return weights_folder(settings.profile, settings.weights_dir, manifest, device, dtype)
    return RandomWeights(full_size if settings.profile == "full-size" else tiny, device, dtype)
