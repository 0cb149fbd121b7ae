"""The ``production`` profile: every model from a weights folder laid out by ``configs/weights.yaml``, through
the library that owns its format — diffusers (base model as a diffusers folder, or one ``.safetensors`` via
``from_single_file`` with the folder's configs; IP-Adapter-FaceID), insightface's model zoo on onnxruntime
(SCRFD detection, ArcFace recognition, inswapper; CUDA provider when present), spandrel (Real-ESRGAN, GFPGAN) and
transformers (SegFormer face parsing, SD1.5's CLIP safety checker). Nothing here downloads; a missing or corrupt
file is named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD
from safetensors.torch import load_file
from spandrel import ImageModelDescriptor, ModelLoader
from transformers import CLIPImageProcessor, SegformerForSemanticSegmentation

from serve_app.pipeline.faces import SCRFD_INPUT, ScrfdFaceAnalyzer
from serve_app.pipeline.models.execution import onnx_providers, place_image_model
from serve_app.pipeline.models.weights import WeightsError, WeightsManifest
from serve_app.pipeline.parsing import SegformerFaceParser
from serve_app.pipeline.restoration import FaceRestorer, NetworkFaceRestorer
from serve_app.pipeline.safety import SafetyChecker
from serve_app.pipeline.upscale import UPSCALE_FACTORS

MODEL_FILE_SUFFIXES = (".safetensors", ".onnx")
IP_ADAPTER_PARTS = ("image_proj", "ip_adapter")
CPU = torch.device("cpu")
DETECTION_THRESHOLD = 0.5


class ProductionWeights:
    """The models of a production weights folder (checked with ``weights.require_files`` before serving)."""

    def __init__(
        self,
        folder: Path,
        manifest: WeightsManifest,
        device: torch.device = CPU,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.folder, self.manifest, self.device, self.dtype = Path(folder), manifest, device, dtype

    def model_folder(self, name: str) -> Path:
        if name not in self.manifest.models:
            raise WeightsError(f"the weights manifest has no model {name!r}")
        return self.folder / name

    def model_file(self, name: str) -> Path:
        """The one weights file (``.safetensors`` or ``.onnx``) of a model."""
        files = [w.stored for w in self.manifest.models[name].files if Path(w.stored).suffix in MODEL_FILE_SUFFIXES]
        if len(files) != 1:
            raise WeightsError(f"model {name!r} must have exactly one weights file in the manifest, has {files}")
        path = self.model_folder(name) / files[0]
        if not path.is_file():
            raise WeightsError(f"{path}: missing; run `python -m serve_app weights fetch --dir {self.folder}`")
        return path

    def diffusion_pipeline(self) -> StableDiffusionPipeline:
        folder = self.model_folder("base")
        options: dict[str, Any] = {
            "torch_dtype": self.dtype,
            "local_files_only": True,
            "safety_checker": None,
            "requires_safety_checker": False,
        }
        if (folder / "model_index.json").is_file() and not single_file_checkpoints(folder):
            return StableDiffusionPipeline.from_pretrained(
                folder, variant=fp16_variant(folder), feature_extractor=None, **options
            )
        return StableDiffusionPipeline.from_single_file(str(self.model_file("base")), config=str(folder), **options)

    def ip_adapter_state(self, unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
        return split_ip_adapter_state(load_file(self.model_file("ip_adapter_faceid")))

    def identity_encoder(self) -> ArcFaceONNX:
        return self.onnx_model("face_recognizer", ArcFaceONNX)

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

    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return {scale: self.image_model(f"upscaler_x{scale}", "ESRGAN") for scale in UPSCALE_FACTORS}

    def face_restorer(self) -> FaceRestorer:
        return NetworkFaceRestorer(self.image_model("face_restorer", "GFPGAN"))

    def safety_checker(self) -> SafetyChecker:
        folder = self.model_folder("safety_checker")
        model = StableDiffusionSafetyChecker.from_pretrained(
            folder / "safety_checker", variant=fp16_variant(folder), dtype=self.dtype, local_files_only=True
        )
        processor = CLIPImageProcessor.from_pretrained(folder / "feature_extractor", local_files_only=True)
        return SafetyChecker(model.to(self.device).eval(), processor)

    def onnx_model(self, name: str, expected: type) -> Any:
        path = self.model_file(name)
        model = get_model(str(path), providers=onnx_providers())
        if not isinstance(model, expected):
            raise WeightsError(f"{path}: insightface reads it as {type(model).__name__}, not {expected.__name__}")
        return model

    def image_model(self, name: str, architecture: str) -> ImageModelDescriptor:
        path = self.model_file(name)
        model = ModelLoader().load_from_file(path)
        if model.architecture.id != architecture:
            raise WeightsError(f"{path}: spandrel reads it as {model.architecture.id}, not {architecture}")
        return place_image_model(model, self.device)

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


def fp16_variant(folder: Path) -> str | None:
    """``"fp16"`` when the folder's component subfolders hold diffusers' fp16 variant files (``*.fp16.safetensors``)."""
    return "fp16" if any(folder.glob("*/*.fp16.safetensors")) else None


def single_file_checkpoints(folder: Path) -> list[Path]:
    """Top-level ``.safetensors`` files: a single-file base model (its configs sit beside it)."""
    return sorted(folder.glob("*.safetensors"))


def split_ip_adapter_state(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The flat safetensors layout (``image_proj.*``, ``ip_adapter.*``) as the nested dict diffusers loads."""
    state: dict[str, dict[str, torch.Tensor]] = {part: {} for part in IP_ADAPTER_PARTS}
    for key, tensor in flat.items():
        part, _, rest = key.partition(".")
        if part not in state:
            raise WeightsError(f"IP-Adapter weight {key!r} is neither image_proj.* nor ip_adapter.*")
        state[part][rest] = tensor
    return state


def verify_loadable(weights: ProductionWeights) -> list[str]:
    """Problems loading each model (on the CPU unless CUDA is there), one line per model."""
    problems = []
    for name, load in weights.loaders().items():
        try:
            load()
        except Exception as error:  # noqa: BLE001 — every loader failure is reported, naming the model
            problems.append(f"{name}: cannot be loaded from {weights.model_folder(name)}: {error}")
    return problems
