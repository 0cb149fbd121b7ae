"""Where and how models run: device and dtype choice, and a reduced-precision run of the whole pipeline (the
GPU's float16/bfloat16 path; bfloat16 runs on a CPU too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serve_app.pipeline.models import Models, ModelSettings
from serve_app.pipeline.models.execution import onnx_providers, resolve_device, resolve_dtype
from serve_app.in_process import generate
from serve_app.pipeline.portrait import PortraitPipeline
from serve_app.schemas import PortraitOptions
from serve_app.styles.catalog import StyleCatalog


def test_auto_picks_the_gpu_when_there_is_one_and_its_precision():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert onnx_providers()[-1] == "CPUExecutionProvider"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        Models(ModelSettings(device="cuda"))


def test_the_pipeline_runs_in_reduced_precision(sample_face, styles_dir):
    models = Models(ModelSettings(dtype="bfloat16"))
    assert models.diffusion.unet.dtype == models.diffusion.vae.dtype == torch.bfloat16
    options = PortraitOptions(style="film-noir", num_candidates=2, top_k=1, seed=3, size=64, steps=2, upscale=2)
    run = generate(PortraitPipeline(models), [sample_face], StyleCatalog(styles_dir).get("film-noir"), options)
    (portrait,) = run.portraits
    assert portrait.image.shape == (128, 128, 3) and portrait.image.dtype == np.uint8
    assert np.ptp(portrait.image) > 0
