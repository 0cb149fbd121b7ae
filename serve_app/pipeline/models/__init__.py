"""Every model the stages use, built in one place by profile.

- ``tiny`` (the default for the demo, tests and CI) builds the diffusion parts, the IP-Adapter-FaceID weights, the
  ArcFace-signature recognizer, the RRDBNet upscalers and the safety checker from small configs with seeded random
  weights.
- ``full-size`` builds the production architectures (SD1.5, IP-Adapter-FaceID SD1.5, an ArcFace-sized recognizer,
  Real-ESRGAN x2plus/x4plus, GFPGAN v1.4, SD1.5's safety checker) with seeded random weights and no files: for
  measuring speed.
- ``production`` loads the real weights from a weights folder (``configs/weights.yaml``).
- ``commercial`` loads only models cleared for commercial use (``configs/weights-commercial.yaml``): identity from
  IP-Adapter Plus-face on a CLIP image encoder, MediaPipe's detector, face mesh and person matte, AuraFace ranking,
  Open-NSFW, Real-ESRGAN; no insightface, no face swap, no GFPGAN.
- ``tiny-commercial`` is its twin for CI and demos: random diffusion parts (a tiny CLIP vision tower and Plus-face
  Resampler in the real key layout) beside the real packaged MediaPipe and Open-NSFW models.

All go through the same loading APIs (``load_ip_adapter``, onnxruntime, spandrel) and the same placement
(device, dtype, channels-last, optional compilation). The vision models of tiny and full-size are real: dlib's
detector, landmarks and face descriptor, OpenCV's cascades; production detects with SCRFD.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from diffusers import StableDiffusionPipeline
from spandrel import ImageModelDescriptor

from serve_app.pipeline.faces import FaceAnalyzer
from serve_app.pipeline.identity import IdentityEncoder
from serve_app.pipeline.lora import create_slot
from serve_app.pipeline.models.execution import compile_unet, place_pipeline, resolve_device, resolve_dtype
from serve_app.pipeline.models.identity_attention import install_gated_processors
from serve_app.pipeline.settings import ModelSettings
from serve_app.pipeline.models.profiles import model_source
from serve_app.pipeline.models.sources import ModelSource
from serve_app.pipeline.parsing import FaceParser
from serve_app.pipeline.recognition import Recognizer
from serve_app.pipeline.restoration import FaceRestorer
from serve_app.pipeline.safety import SafetyChecker

if TYPE_CHECKING:
    from insightface.model_zoo.inswapper import INSwapper

IDENTITY_LORA = "faceid_0"  # the LoRA IP-Adapter-FaceID checkpoints carry, as diffusers names it


class Models:
    """The models of one profile, each built on first use, so a stage's process builds only what it needs."""

    def __init__(self, settings: ModelSettings = ModelSettings()) -> None:
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.source: ModelSource = model_source(settings, self.device, self.dtype)

    @property
    def profile(self) -> str:
        return self.settings.profile

    @functools.cached_property
    def diffusion(self) -> StableDiffusionPipeline:
        """SD1.5-class pipeline with the profile's IP-Adapter loaded (FaceID's LoRA fused; Plus-face has none) and
        per-sample gated identity attention, placed on the device; compiled when asked (styles then hot-swap into
        one LoRA slot)."""
        torch.set_grad_enabled(False)
        pipe = self.source.diffusion_pipeline()
        pipe.load_ip_adapter(
            self.source.ip_adapter_state(pipe.unet), subfolder=None, weight_name=None, image_encoder_folder=None
        )
        fuse_identity_lora(pipe)
        install_gated_processors(pipe.unet)
        pipe.set_progress_bar_config(disable=True)
        place_pipeline(pipe, self.device, self.dtype)
        if self.settings.compile_unet:
            create_slot(pipe, self.settings.max_lora_rank)
            compile_unet(pipe)
        return pipe

    @functools.cached_property
    def identity_encoder(self) -> IdentityEncoder:
        """What conditions the sampler: ArcFace (FaceID profiles) or the Plus-face CLIP encoder (commercial)."""
        return self.source.identity_encoder()

    @functools.cached_property
    def faces(self) -> FaceAnalyzer:
        return self.source.face_analyzer()

    @functools.cached_property
    def recognizer(self) -> Recognizer:
        """What ranks and judges identity: always a face recognizer — ArcFace (the same object as
        ``identity_encoder``) in production and full-size, dlib's ResNet on tiny (whose ArcFace is a small random
        net), AuraFace in the commercial profiles (whose conditioning is CLIP)."""
        return self.source.recognizer(self)

    @functools.cached_property
    def face_parser(self) -> FaceParser:
        return self.source.face_parser()

    @functools.cached_property
    def face_swapper(self) -> INSwapper | None:
        return self.source.face_swapper()

    @functools.cached_property
    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return self.source.upscalers()

    @functools.cached_property
    def face_restorer(self) -> FaceRestorer:
        return self.source.face_restorer()

    @functools.cached_property
    def safety_checker(self) -> SafetyChecker:
        return self.source.safety_checker()

    def build(self, *names: str) -> None:
        """Build these models now (a replica's start-up) rather than on its first request."""
        for name in names:
            getattr(self, name)


def fuse_identity_lora(pipe: StableDiffusionPipeline) -> None:
    """IP-Adapter-FaceID was trained with a LoRA on the UNet; fuse it into the base weights so style LoRAs own
    the adapter slots (``load_lora_weights`` would otherwise switch it off)."""
    if IDENTITY_LORA in pipe.get_list_adapters().get("unet", []):
        pipe.fuse_lora(adapter_names=[IDENTITY_LORA], lora_scale=1.0)
        pipe.unload_lora_weights()


@functools.cache
def load_models(settings: ModelSettings = ModelSettings()) -> Models:
    """The process-wide models of a profile (each built on first use)."""
    return Models(settings)
