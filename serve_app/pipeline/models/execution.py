"""Where and how models run: device, dtype, memory layout, onnxruntime providers and optional compilation."""

from __future__ import annotations

import logging

import onnxruntime
import torch
from diffusers import StableDiffusionPipeline
from spandrel import ImageModelDescriptor

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: float16 on a GPU (SD1.5's VAE and UNet are stable in it), float32 on a CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def onnx_providers() -> list[str]:
    """onnxruntime's CUDA provider first when this onnxruntime build has it (onnxruntime-gpu), else the CPU."""
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def place_pipeline(pipe: StableDiffusionPipeline, device: torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Move to the device and dtype; on a GPU, channels-last convolutions. Attention already runs through
    PyTorch's scaled_dot_product_attention (diffusers' AttnProcessor2_0 and the gated IP-Adapter processors)."""
    pipe.to(device)
    if pipe.unet.dtype != dtype:  # diffusers warns on every cast, also a no-op one
        pipe.to(dtype=dtype)
    if device.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        pipe.vae.enable_slicing()  # a batch of 32 candidates decoded at once would peak at tens of GB
    return pipe


def place_image_model(model: ImageModelDescriptor, device: torch.device) -> ImageModelDescriptor:
    """On a GPU, half precision where the architecture supports it (spandrel says which)."""
    model = model.to(device).eval()
    if device.type == "cuda" and model.supports_half:
        model = model.half()
    return model


def compile_unet(pipe: StableDiffusionPipeline) -> None:
    """Compile the UNet once, after ``lora.create_slot``: styles are then hot-swapped into that one adapter slot
    (peft's compiled hotswap: rank padded to the target, scalings as tensors), so swapping never recompiles."""
    logger.info("compiling the UNet (the first request of each shape pays for compilation)")
    pipe.unet = torch.compile(pipe.unet)  # batch sizes vary with the batching: dynamic shapes after the second
