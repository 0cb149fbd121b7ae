"""The compiled-UNet mode (``compile_unet``): styles hot-swapped into one LoRA slot never recompile the UNet, and
each swap really changes (and restores) the output. torch.compile runs for real (inductor on the CPU)."""

from __future__ import annotations

import torch
from test_lora import noise_of
from torch._dynamo.utils import counters

from serve_app.pipeline.lora import HotSwapAdapters, style_adapters
from serve_app.pipeline.models import Models, ModelSettings
from serve_app.styles.catalog import StyleCatalog


def test_swapping_styles_never_recompiles_the_unet(styles_dir):
    torch._dynamo.reset()
    pipe = Models(ModelSettings(compile_unet=True, max_lora_rank=8)).diffusion
    adapters, catalog = style_adapters(pipe), StyleCatalog(styles_dir)
    assert isinstance(adapters, HotSwapAdapters)
    outputs, graphs = [], []
    for name in ("film-noir", "summer-beach", "film-noir", "xmas-sweater"):
        style = catalog.get(name)
        adapters.load(style.versioned_id, style.read_lora)
        with adapters.active(style.versioned_id, style.manifest.lora.scale):
            outputs.append(noise_of(pipe))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [graphs[0]] * 4  # compiled once, on the first call
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    assert torch.allclose(outputs[0], outputs[2], atol=1e-5)
