"""The ``production`` profile: every model from a weights folder laid out by ``configs/weights.yaml``, through
the library that owns its format — diffusers (base model, IP-Adapter-FaceID; see ``weights_folder``),
insightface's model zoo on onnxruntime (SCRFD detection, ArcFace recognition, inswapper; CUDA provider when
present), spandrel (Real-ESRGAN, GFPGAN) and transformers (SegFormer face parsing, SD1.5's CLIP safety checker).
Nothing here downloads; a missing or corrupt file is named."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD
from transformers import CLIPImageProcessor, SegformerForSemanticSegmentation

from serve_app.pipeline.faces import SCRFD_INPUT, ScrfdFaceAnalyzer
from serve_app.pipeline.models.execution import onnx_providers
from serve_app.pipeline.models.sources import SharedModels
from serve_app.pipeline.models.weights import WeightsError
from serve_app.pipeline.models.weights_folder import WeightsFolder, fp16_variant
from serve_app.pipeline.parsing import SegformerFaceParser
from serve_app.pipeline.recognition import ArcFaceRecognizer, Recognizer
from serve_app.pipeline.restoration import FaceRestorer, NetworkFaceRestorer
from serve_app.pipeline.safety import ClipSafetyChecker

DETECTION_THRESHOLD = 0.5


class ProductionWeights(WeightsFolder):
    """The production models of a weights folder."""

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return self.adapter_state("ip_adapter_faceid")

    def identity_encoder(self) -> ArcFaceRecognizer:
        return ArcFaceRecognizer(self.onnx_model("face_recognizer", ArcFaceONNX))

    def recognizer(self, models: SharedModels) -> Recognizer:
        """ArcFace ranks: the identity encoder itself (one model loaded)."""
        return models.identity_encoder

    def face_detector(self) -> SCRFD:
        detector = self.onnx_model("face_detector", SCRFD)
        detector.prepare(ctx_id=0, input_size=SCRFD_INPUT, det_thresh=DETECTION_THRESHOLD)  # ctx_id ≥ 0 keeps providers
        return detector

    def face_analyzer(self) -> ScrfdFaceAnalyzer:
        return ScrfdFaceAnalyzer(self.face_detector())

    def face_swapper(self) -> INSwapper:
        return self.onnx_model("face_swapper", INSwapper)

    def face_parser(self) -> SegformerFaceParser:
        folder = self.model_folder("face_parser")
        model = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
        return SegformerFaceParser(model.to(self.device).eval())

    def face_restorer(self) -> FaceRestorer:
        return NetworkFaceRestorer(self.image_model("face_restorer", "GFPGAN"))

    def safety_checker(self) -> ClipSafetyChecker:
        folder = self.model_folder("safety_checker")
        model = StableDiffusionSafetyChecker.from_pretrained(
            folder / "safety_checker", variant=fp16_variant(folder), dtype=self.dtype, local_files_only=True
        )
        processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor", local_files_only=True)
        return ClipSafetyChecker(model.to(self.device).eval(), processor)

    def onnx_model(self, name: str, expected: type) -> Any:
        path = self.model_file(name)
        model = get_model(str(path), providers=onnx_providers())
        if not isinstance(model, expected):
            raise WeightsError(f"{path}: insightface reads it as {type(model).__name__}, not {expected.__name__}")
        return model

    def loaders(self) -> dict[str, Callable[[], object]]:
        """What ``weights verify`` loads, per manifest model."""
        return {
            "base": self.diffusion_pipeline,
            "ip_adapter_faceid": lambda: self.ip_adapter_state(None),
            "face_detector": self.face_detector,
            "face_recognizer": self.identity_encoder,
            "face_swapper": self.face_swapper,
            "face_parser": self.face_parser,
            "upscaler_x2": lambda: self.image_model("upscaler_x2", "ESRGAN"),
            "upscaler_x4": lambda: self.image_model("upscaler_x4", "ESRGAN"),
            "face_restorer": self.face_restorer,
            "safety_checker": self.safety_checker,
        }

