"""What the profiles that load a weights folder (``production``, ``commercial``) share: the folder's files by
manifest model, the base model through diffusers (a diffusers folder, or one ``.safetensors`` via
``from_single_file`` with the folder's configs), IP-Adapter weights, spandrel image models (Real-ESRGAN) and the
``weights verify`` load check. Nothing here downloads; a missing or corrupt file is named."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from spandrel import ImageModelDescriptor, ModelLoader

from serve_app.pipeline.models.execution import place_image_model
from serve_app.pipeline.models.weights import WeightsError, WeightsManifest
from serve_app.pipeline.upscale import UPSCALE_FACTORS

MODEL_FILE_SUFFIXES = (".safetensors", ".onnx")
IP_ADAPTER_PARTS = ("image_proj", "ip_adapter")
CPU = torch.device("cpu")


class WeightsFolder(ABC):
    """The models of a weights folder (checked with ``weights.require_files`` before serving)."""

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

    def adapter_state(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        """The IP-Adapter model ``name`` as the nested dict ``load_ip_adapter`` takes."""
        return split_ip_adapter_state(load_file(self.model_file(name)))

    def upscalers(self) -> dict[int, ImageModelDescriptor]:
        return {scale: self.image_model(f"upscaler_x{scale}", "ESRGAN") for scale in UPSCALE_FACTORS}

    def image_model(self, name: str, architecture: str) -> ImageModelDescriptor:
        path = self.model_file(name)
        model = ModelLoader().load_from_file(path)
        if model.architecture.id != architecture:
            raise WeightsError(f"{path}: spandrel reads it as {model.architecture.id}, not {architecture}")
        return place_image_model(model, self.device)

    @abstractmethod
    def loaders(self) -> dict[str, Callable[[], object]]:
        """What ``weights verify`` loads, per manifest model."""


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


def verify_loadable(weights: WeightsFolder) -> list[str]:
    """Problems loading each model (on the CPU unless CUDA is there), one line per model."""
    problems = []
    for name, load in weights.loaders().items():
        try:
            load()
        except Exception as error:  # noqa: BLE001 — every loader failure is reported, naming the model
            problems.append(f"{name}: cannot be loaded from {weights.folder / name}: {error}")
    return problems
