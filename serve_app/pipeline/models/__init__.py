"""Every model the stages use, built in one place by profile.

``tiny`` (the default for the demo, tests and CI) builds the diffusion parts, the IP-Adapter-FaceID weights, the
ArcFace-signature recognizer and the RRDBNet upscalers from small configs with seeded random weights, and loads
them through the same APIs production weights go through (``load_ip_adapter``, insightface's model zoo,
spandrel). The vision models are real: dlib's detector, landmarks and face descriptor, OpenCV's cascades.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
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


@dataclass
class Models:
    profile: str
    diffusion: StableDiffusionPipeline
    identity_encoder: ArcFaceONNX
    faces: FaceAnalyzer
    upscalers: dict[int, ImageModelDescriptor]
    face_restorer: FaceRestorer


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"unknown model profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    return profile


@functools.lru_cache(maxsize=None)
def load_models(profile: str = "tiny") -> Models:
    """Build (once per process) the models of a profile."""
    check_profile(profile)
    torch.set_grad_enabled(False)
    diffusion = tiny.build_diffusion_pipeline()
    diffusion.load_ip_adapter(
        tiny.ip_adapter_faceid_state_dict(diffusion.unet), subfolder=None, weight_name=None, image_encoder_folder=None
    )
    install_gated_processors(diffusion.unet)
    diffusion.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = tiny.write_arcface_onnx(Path(folder) / "w600k_r50.onnx")
        identity_encoder = get_model(str(onnx_path), providers=["CPUExecutionProvider"])
    upscalers = {
        scale: ModelLoader().load_from_state_dict(tiny.rrdbnet_state_dict(scale)).eval() for scale in UPSCALE_FACTORS
    }
    return Models(
        profile=profile,
        diffusion=diffusion,
        identity_encoder=identity_encoder,
        faces=FaceAnalyzer(),
        upscalers=upscalers,
        face_restorer=ClassicalFaceRestorer(),
    )
