"""What a profile's model source provides (``ModelSource``), and the sources of seeded random weights built in code
(``tiny``, ``full-size``); ``production.py`` and ``commercial.py`` hold the others, ``profiles.py`` picks one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from spandrel import ImageModelDescriptor, ModelLoader

from serve_app.pipeline.faces import DlibFaceAnalyzer, FaceAnalyzer
from serve_app.pipeline.identity import IdentityEncoder
from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.execution import onnx_providers, place_image_model
from serve_app.pipeline.parsing import FaceParser, LandmarkFaceParser
from serve_app.pipeline.recognition import ArcFaceRecognizer, DlibRecognizer, Recognizer
from serve_app.pipeline.restoration import FaceRestorer
from serve_app.pipeline.safety import SafetyChecker
from serve_app.pipeline.upscale import UPSCALE_FACTORS

if TYPE_CHECKING:
    from insightface.model_zoo.inswapper import INSwapper


class SharedModels(Protocol):
    """The models already built (``Models``) that a source's recognizer may share."""

    @property
    def faces(self) -> FaceAnalyzer: ...

    @property
    def identity_encoder(self) -> IdentityEncoder: ...


class ModelSource(Protocol):
    def diffusion_pipeline(self) -> StableDiffusionPipeline: ...

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]: ...

    def identity_encoder(self) -> IdentityEncoder: ...

    def recognizer(self, models: SharedModels) -> Recognizer:
        """What ranks and judges identity: a face recognizer (``models`` lends the ones already built)."""

    def upscalers(self) -> dict[int, ImageModelDescriptor]: ...

    def face_restorer(self) -> FaceRestorer: ...

    def face_analyzer(self) -> FaceAnalyzer: ...

    def face_parser(self) -> FaceParser: ...

    def face_swapper(self) -> INSwapper | None: ...

    def safety_checker(self) -> SafetyChecker: ...


def random_upscalers(builders: ModuleType, device: torch.device) -> dict[int, ImageModelDescriptor]:
    """Real-ESRGAN RRDBNets of ``builders``' size with seeded weights, loaded through spandrel."""
    return {
        scale: place_image_model(ModelLoader().load_from_state_dict(builders.rrdbnet_state_dict(scale)), device)
        for scale in UPSCALE_FACTORS
    }


class RandomWeights:
    """A profile whose builders module (``tiny`` or ``full_size``) makes every model from a config with seeded
    random weights; ONNX models are written to a temporary file and loaded through insightface's model zoo."""

    def __init__(self, builders: ModuleType, device: torch.device, dtype: torch.dtype) -> None:
        self.builders, self.device, self.dtype = builders, device, dtype

    def diffusion_pipeline(self) -> StableDiffusionPipeline:
        return self.builders.build_diffusion_pipeline(self.device, self.dtype)

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return tiny.ip_adapter_faceid_state_dict(unet)  # shaped by the UNet: serves both profiles

    def identity_encoder(self) -> ArcFaceRecognizer:
        from insightface.model_zoo import get_model

        with tempfile.TemporaryDirectory() as folder:
            onnx_path = self.builders.write_arcface_onnx(Path(folder) / "w600k_r50.onnx")
            return ArcFaceRecognizer(get_model(str(onnx_path), providers=onnx_providers()))

    def recognizer(self, models: SharedModels) -> Recognizer:
        """tiny's ArcFace is a small random net: dlib's real ResNet ranks there; full-size ranks with its ArcFace."""
        return DlibRecognizer(models.faces) if self.builders is tiny else models.identity_encoder

    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return random_upscalers(self.builders, self.device)

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
