"""Where a profile's models come from: seeded random weights built in code (``tiny``, ``full-size``) or the
files of a production weights folder (``production``, see ``production.py``)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from spandrel import ImageModelDescriptor, ModelLoader

from serve_app.pipeline.faces import DlibFaceAnalyzer, FaceAnalyzer
from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.execution import onnx_providers, place_image_model
from serve_app.pipeline.parsing import FaceParser, LandmarkFaceParser
from serve_app.pipeline.restoration import FaceRestorer
from serve_app.pipeline.safety import SafetyChecker
from serve_app.pipeline.upscale import UPSCALE_FACTORS

if TYPE_CHECKING:
    from serve_app.pipeline.settings import ModelSettings


class ModelSource(Protocol):
    def diffusion_pipeline(self) -> StableDiffusionPipeline: ...

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]: ...

    def identity_encoder(self) -> ArcFaceONNX: ...

    def upscalers(self) -> dict[int, ImageModelDescriptor]: ...

    def face_restorer(self) -> FaceRestorer: ...

    def face_analyzer(self) -> FaceAnalyzer: ...

    def face_parser(self) -> FaceParser: ...

    def face_swapper(self) -> INSwapper | None: ...

    def safety_checker(self) -> SafetyChecker: ...


class RandomWeights:
    """A profile whose builders module (``tiny`` or ``full_size``) makes every model from a config with seeded
    random weights; ONNX models are written to a temporary file and loaded through insightface's model zoo."""

    def __init__(self, builders: ModuleType, device: torch.device, dtype: torch.dtype) -> None:
        self.builders, self.device, self.dtype = builders, device, dtype

    def diffusion_pipeline(self) -> StableDiffusionPipeline:
        return self.builders.build_diffusion_pipeline(self.device, self.dtype)

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return tiny.ip_adapter_faceid_state_dict(unet)  # shaped by the UNet: serves both profiles

    def identity_encoder(self) -> ArcFaceONNX:
        with tempfile.TemporaryDirectory() as folder:
            onnx_path = self.builders.write_arcface_onnx(Path(folder) / "w600k_r50.onnx")
            return get_model(str(onnx_path), providers=onnx_providers())

    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return {
            scale: place_image_model(
                ModelLoader().load_from_state_dict(self.builders.rrdbnet_state_dict(scale)), self.device
            )
            for scale in UPSCALE_FACTORS
        }

    def face_restorer(self) -> FaceRestorer:
        return self.builders.build_face_restorer(self.device)

    def face_analyzer(self) -> DlibFaceAnalyzer:
        """dlib's detectors: real ones, where a random SCRFD would find random faces."""
        return DlibFaceAnalyzer()

    def face_parser(self) -> FaceParser:
        return LandmarkFaceParser()

    def face_swapper(self) -> None:
        """Seamless cloning fuses: a random inswapper would paste noise."""

    def safety_checker(self) -> SafetyChecker:
        return self.builders.build_safety_checker(self.device, self.dtype)


def model_source(settings: ModelSettings, device: torch.device, dtype: torch.dtype) -> ModelSource:
    if settings.profile == "production":
        from serve_app.pipeline.models.production import ProductionWeights
        from serve_app.pipeline.models.weights import load_manifest

        if settings.weights_dir is None:
            raise ValueError("the production profile needs a weights folder (weights_dir)")
        manifest = load_manifest(settings.weights_manifest)
        return ProductionWeights(settings.weights_dir, manifest, device, dtype)
    if settings.profile == "full-size":
        from serve_app.pipeline.models import full_size

        return RandomWeights(full_size, device, dtype)
    return RandomWeights(tiny, device, dtype)
