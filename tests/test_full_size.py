"""The full-size profile's architectures: SD1.5 built on the meta device (no weights allocated), the
IP-Adapter-FaceID SD1.5 shapes, the Real-ESRGAN RRDBNets through spandrel, the IResNet-50 sized ArcFace ONNX."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from diffusers import StableDiffusionPipeline
from insightface.model_zoo import get_model
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from onnx import numpy_helper, shape_inference
from spandrel import ModelLoader

from serve_app.pipeline.models import full_size, tiny


@pytest.fixture(scope="module")
def meta_pipeline() -> StableDiffusionPipeline:
    return full_size.build_diffusion_pipeline(device="meta")


def parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_diffusion_pipeline_is_sd15(meta_pipeline):
    assert parameter_count(meta_pipeline.unet) == 859_520_964
    assert parameter_count(meta_pipeline.vae) == 83_653_863
    assert parameter_count(meta_pipeline.text_encoder) == 123_060_480
    assert all(p.is_meta for p in meta_pipeline.unet.parameters())
    assert meta_pipeline.unet.config.sample_size * meta_pipeline.vae_scale_factor == 512
    assert meta_pipeline.vae.config.scaling_factor == 0.18215
    assert meta_pipeline.text_encoder.config.hidden_act == "quick_gelu"
    token_ids = meta_pipeline.tokenizer("a portrait photo, film noir").input_ids
    assert max(token_ids) < meta_pipeline.text_encoder.config.vocab_size


def test_ip_adapter_faceid_sd15_shapes(meta_pipeline):
    state = tiny.ip_adapter_faceid_state_dict(meta_pipeline.unet)
    image_proj, ip_adapter = state["image_proj"], state["ip_adapter"]
    assert image_proj["proj.0.weight"].shape == (1024, 512)
    assert image_proj["proj.2.weight"].shape == (768 * 4, 1024)
    assert image_proj["norm.weight"].shape == (768,)
    # SD1.5 has 16 cross-attention layers, numbered 1, 3, …, 31 in the published weights
    assert sorted({int(key.split(".")[0]) for key in ip_adapter}) == list(range(1, 32, 2))
    assert ip_adapter["1.to_k_ip.weight"].shape == (320, 768)
    assert ip_adapter["31.to_v_ip.weight"].shape == (1280, 768)


def test_safety_checker_is_sd15s():
    checker = full_size.build_safety_checker(torch.device("meta"), torch.float32)
    assert parameter_count(checker.model) == 303_981_588  # CLIP ViT-L/14 vision tower, projection, concepts
    assert checker.model.concept_embeds.shape == (17, 768) and checker.model.special_care_embeds.shape == (3, 768)
    assert checker.processor.crop_size == {"height": 224, "width": 224}


@pytest.mark.parametrize(("scale", "parameters"), [(2, 16_703_171), (4, 16_697_987)])
def test_rrdbnet_is_real_esrgan(astronaut, scale, parameters):
    upscaler = ModelLoader().load_from_state_dict(full_size.rrdbnet_state_dict(scale)).eval()
    assert upscaler.architecture.name == "ESRGAN" and upscaler.scale == scale
    assert "23nb" in upscaler.tags and "64nf" in upscaler.tags
    assert parameter_count(upscaler.model) == parameters
    small = cv2.resize(astronaut, (32, 32), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        upscaled = upscaler(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)
    upscaled = (upscaled[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round()
    nearest = cv2.resize(small, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    assert np.abs(upscaled - nearest).mean() < 25


@pytest.fixture(scope="module")
def arcface_path(tmp_path_factory) -> Iterator[Path]:
    path = full_size.write_arcface_onnx(tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx")
    yield path
    path.unlink()  # 174 MB


def test_arcface_onnx_loads_as_arcface(arcface_path):
    recognizer = get_model(str(arcface_path), providers=["CPUExecutionProvider"])
    assert isinstance(recognizer, ArcFaceONNX)
    assert recognizer.input_name == "input.1" and recognizer.input_size == (112, 112)
    # the in-graph Sub/Mul normalisation is detected, so raw pixels go in
    assert (recognizer.input_mean, recognizer.input_std) == (0.0, 1.0)
    face = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    embedding = recognizer.get_feat([face])
    assert embedding.shape == (1, 512) and np.isfinite(embedding).all()


def test_arcface_onnx_is_iresnet50_sized(arcface_path):
    assert arcface_path.stat().st_size < 200e6
    model = shape_inference.infer_shapes(onnx.load(arcface_path))
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    assert 43e6 < sum(weight.size for weight in weights.values()) < 44e6
    spatial = {
        info.name: [dim.dim_value for dim in info.type.tensor_type.shape.dim][2:] for info in model.graph.value_info
    }
    multiply_adds = sum(
        weights[node.input[1]].size * int(np.prod(spatial.get(node.output[0], [1])))
        for node in model.graph.node
        if node.op_type in ("Conv", "Gemm")
    )
    assert 6.0e9 < multiply_adds < 6.6e9
