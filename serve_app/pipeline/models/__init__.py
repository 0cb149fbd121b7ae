"""Every model the stages use, built in one place by profile.

``tiny`` (the default for the demo, tests and CI) builds the diffusion parts, the IP-Adapter-FaceID weights, the
ArcFace-signature recognizer and the RRDBNet upscalers from small configs with seeded random weights, and loads
them through the same APIs production weights go through (``load_ip_adapter``, insightface's model zoo,
spandrel). The vision models are real: dlib's detector, landmarks and face descriptor, OpenCV's cascades.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from spandrel import ImageModelDescriptor, ModelLoader

from serve_app.pipeline.faces import FaceAnalyzer
from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.identity_attention import install_gated_processors
from serve_app.pipeline.restoration import ClassicalFaceRestorer, FaceRestorer

PROFILES = ("tiny",)
UPSCALE_FACTORS = (2, 4)


class Models:
    """The models of one profile, each built on first use, so a stage's process builds only what it needs."""

    def __init__(self, profile: str) -> None:
        self.profile = check_profile(profile)

    @functools.cached_property
    def diffusion(self) -> StableDiffusionPipeline:
        """SD1.5-shaped pipeline with IP-Adapter-FaceID loaded and per-sample gated identity attention."""
        torch.set_grad_enabled(False)
        pipe = tiny.build_diffusion_pipeline()
        pipe.load_ip_adapter(
            tiny.ip_adapter_faceid_state_dict(pipe.unet), subfolder=None, weight_name=None, image_encoder_folder=None
        )
        install_gated_processors(pipe.unet)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @functools.cached_property
    def identity_encoder(self) -> ArcFaceONNX:
        with tempfile.TemporaryDirectory() as folder:
            onnx_path = tiny.write_arcface_onnx(Path(folder) / "w600k_r50.onnx")
            return get_model(str(onnx_path), providers=["CPUExecutionProvider"])

    @functools.cached_property
    def faces(self) -> FaceAnalyzer:
        return FaceAnalyzer()

    @functools.cached_property
    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return {
            scale: ModelLoader().load_from_state_dict(tiny.rrdbnet_state_dict(scale)).eval()
            for scale in UPSCALE_FACTORS
        }

    @functools.cached_property
    def face_restorer(self) -> FaceRestorer:
        return ClassicalFaceRestorer()


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    return profile


@functools.lru_cache(maxsize=None)
def load_models(profile: str = "tiny") -> Models:
    """The process-wide models of a profile (each built on first use)."""
    return Models(profile)
