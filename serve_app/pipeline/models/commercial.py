"""The commercial profiles: only models cleared for commercial use (``configs/weights-commercial.yaml``), and no
insightface anywhere in their processes.

- identity: IP-Adapter Plus-face, conditioned on a CLIP image encoder's hidden states of the face crop;
- faces: MediaPipe's BlazeFace and 468-point face mesh; parsing from the mesh, the person matte and GrabCut;
- ranking: AuraFace-v1 (an ArcFace-format ONNX) on onnxruntime; no face swap (none is cleared): Poisson cloning;
- restoration: classical (GFPGAN's training data is not cleared); safety: Open-NSFW.

``tiny-commercial`` builds the diffusion parts, the CLIP tower, the Resampler, the recognizer and the upscalers
small with seeded random weights (the recognizer as a tiny ONNX of AuraFace's signature) and runs the packaged
MediaPipe and Open-NSFW models for real; ``commercial`` loads everything from a weights folder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from spandrel import ImageModelDescriptor
from transformers import CLIPVisionModelWithProjection

from serve_app.pipeline.identity import ClipFaceEncoder, clip_processor
from serve_app.pipeline.mediapipe_faces import MediaPipeFaceAnalyzer, PersonMatte
from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.sources import SharedModels, random_upscalers
from serve_app.pipeline.models.execution import onnx_providers
from serve_app.pipeline.models.weights import WeightsManifest
from serve_app.pipeline.models.weights_folder import WeightsFolder
from serve_app.pipeline.parsing import MeshFaceParser
from serve_app.pipeline.recognition import OnnxFaceRecognizer, Recognizer
from serve_app.pipeline.restoration import ClassicalFaceRestorer, FaceRestorer
from serve_app.pipeline.safety import OpenNsfwChecker

AURAFACE = "auraface-v1"
IMAGE_ENCODER_FOLDER = "models/image_encoder"  # in h94/IP-Adapter, as fetched into DIR/image_encoder/


class CommercialVision:
    """The models both commercial profiles run for real, from the manifest's packaged files."""

    manifest: WeightsManifest

    def face_analyzer(self) -> MediaPipeFaceAnalyzer:
        detector = self.manifest.models["face_detector"].files
        short_range, full_range = (self.manifest.packaged_file("face_detector", weight.file) for weight in detector)
        landmarker = self.manifest.packaged_file("face_landmarker")
        return MediaPipeFaceAnalyzer(short_range=short_range, full_range=full_range, landmarker=landmarker)

    def face_parser(self) -> MeshFaceParser:
        return MeshFaceParser(PersonMatte(self.manifest.packaged_file("person_segmenter")))

    def face_restorer(self) -> FaceRestorer:
        return ClassicalFaceRestorer()

    def face_swapper(self) -> None:
        """No face-swap model is cleared for commercial use: the fusion ranker clones faces in."""

    def safety_checker(self) -> OpenNsfwChecker:
        return OpenNsfwChecker(self.manifest.packaged_file("nsfw_checker"), onnx_providers())


class TinyCommercial(CommercialVision):
    def __init__(self, manifest: WeightsManifest, device: torch.device, dtype: torch.dtype) -> None:
        self.manifest, self.device, self.dtype = manifest, device, dtype

    def diffusion_pipeline(self) -> StableDiffusionPipeline:
        return tiny.build_diffusion_pipeline(self.device, self.dtype)

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return tiny.ip_adapter_plus_face_state_dict(unet)

    def identity_encoder(self) -> ClipFaceEncoder:
        return tiny.build_clip_face_encoder(self.device, self.dtype)

    def recognizer(self, models: SharedModels) -> Recognizer:
        """A random recognizer of AuraFace's signature (its scores rank, they judge nothing)."""
        with tempfile.TemporaryDirectory() as folder:
            onnx_path = tiny.write_arcface_onnx(Path(folder) / "glintr100.onnx")
            return OnnxFaceRecognizer(onnx_path, onnx_providers(), f"{AURAFACE}-tiny-random")

    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return random_upscalers(tiny, self.device)


class CommercialWeights(WeightsFolder, CommercialVision):
    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return self.adapter_state("ip_adapter_plus_face")

    def identity_encoder(self) -> ClipFaceEncoder:
        folder = self.model_folder("image_encoder") / IMAGE_ENCODER_FOLDER
        model = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=self.dtype, local_files_only=True)
        return ClipFaceEncoder(model.to(self.device).eval(), clip_processor(model.config.image_size))

    def recognizer(self, models: SharedModels) -> Recognizer:
        return OnnxFaceRecognizer(self.model_file("face_recognizer"), onnx_providers(), AURAFACE)

    def loaders(self) -> dict[str, Callable[[], object]]:
        return {
            "base": self.diffusion_pipeline,
            "ip_adapter_plus_face": lambda: self.ip_adapter_state(None),
            "image_encoder": self.identity_encoder,
            "face_recognizer": lambda: self.recognizer(None),
            "upscaler_x2": lambda: self.image_model("upscaler_x2", "ESRGAN"),
            "upscaler_x4": lambda: self.image_model("upscaler_x4", "ESRGAN"),
            "face_detector": self.face_analyzer,
            "face_landmarker": self.face_analyzer,
            "person_segmenter": self.face_parser,
            "nsfw_checker": self.safety_checker,
        }
