"""The ``tiny`` profile: SD1.5-shaped diffusion parts, IP-Adapter-FaceID weights, an ArcFace-signature ONNX
recognizer, RRDBNet upscalers and the SD safety checker, all from small configs with seeded random weights,
written in the same formats production weights come in, so every production loading and inference path runs
offline in seconds."""

from __future__ import annotations

import json
from collections.abc import Callable
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from onnx import TensorProto, helper, numpy_helper
from transformers import (
    CLIPConfig,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from serve_app.pipeline.identity import ClipFaceEncoder, clip_processor
from serve_app.pipeline.restoration import ClassicalFaceRestorer, FaceRestorer
from serve_app.pipeline.safety import ClipSafetyChecker, SafetyChecker

SEED = 20261125
CROSS_ATTENTION_DIM = 32
IDENTITY_EMBED_DIM = 512
IDENTITY_TOKENS = 4
RRDB_FEATURES = 16
RRDB_GROWTH = 32  # spandrel detects ESRGAN with the official growth width only
RRDB_BLOCKS = 1
SAFETY_PROJECTION_DIM = 32
CLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,
    "patch_size": 32,
    "projection_dim": 32,
}
RESAMPLER_HIDDEN = 64  # one head of 64 channels
RESAMPLER_QUERIES = 16  # as ip-adapter-plus-face_sd15
RESAMPLER_DEPTH = 4  # diffusers' IPAdapterPlusImageProjection has four blocks
SAFETY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
}

SD15_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def build_diffusion_pipeline(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """An SD1.5-shaped text-to-image pipeline with random weights (UNet latent ×8 VAE, 2-layer CLIP), built on
    ``device`` (seeded values differ between CPU and GPU builds)."""
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer()
    with torch.device(device):
        return assemble_pipeline(*build_tiny_models(tokenizer), tokenizer, dtype)


def build_tiny_models(tokenizer: CLIPTokenizer) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=CROSS_ATTENTION_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return unet, vae, text_encoder


def assemble_pipeline(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    dtype: torch.dtype,
) -> StableDiffusionPipeline:
    """An SD1.5 text-to-image pipeline (DDIM, no safety checker) of random-weight parts, in ``dtype``."""
    if dtype != torch.float32:  # diffusers' ModelMixin.to logs a warning for any dtype argument, even a no-op
        unet, vae, text_encoder = unet.to(dtype), vae.to(dtype), text_encoder.to(dtype)
    return StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP BPE tokenizer with a character vocabulary and no merges, written to files and read
    back with ``from_pretrained`` (the path production tokenizers take)."""
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(Path(folder))
        return CLIPTokenizer.from_pretrained(folder, pad_token="<|endoftext|>", model_max_length=77)


def write_tokenizer_files(folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` as SD1.5's ``tokenizer/`` folder holds them (characters, no merges)."""
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")


def ip_adapter_faceid_state_dict(unet: UNet2DConditionModel) -> dict[str, dict[str, torch.Tensor]]:
    """Random IP-Adapter-FaceID weights shaped for ``unet``, tiny or full-size (for SD1.5: ip-adapter-faceid_sd15
    without its LoRA), in the published key layout: ``image_proj`` (MLP + LayerNorm from the 512-d face embedding
    to 4 tokens of ``unet.config.cross_attention_dim``) and ``ip_adapter`` (see ``ip_adapter_attention_state``)."""
    weight = seeded_weights(SEED + 1)
    cross_attention_dim = unet.config.cross_attention_dim
    embed_dim, hidden = IDENTITY_EMBED_DIM, IDENTITY_EMBED_DIM * 2
    image_proj = {
        "proj.0.weight": weight(hidden, embed_dim),
        "proj.0.bias": torch.zeros(hidden),
        "proj.2.weight": weight(cross_attention_dim * IDENTITY_TOKENS, hidden),
        "proj.2.bias": torch.zeros(cross_attention_dim * IDENTITY_TOKENS),
        "norm.weight": torch.ones(cross_attention_dim),
        "norm.bias": torch.zeros(cross_attention_dim),
    }
    return {"image_proj": image_proj, "ip_adapter": ip_adapter_attention_state(unet, weight)}


def ip_adapter_plus_face_state_dict(
    unet: UNet2DConditionModel, embed_dim: int = CLIP_VISION["hidden_size"]
) -> dict[str, dict[str, torch.Tensor]]:
    """Random IP-Adapter Plus-face weights for ``unet`` in the published key layout of ip-adapter-plus-face_sd15:
    ``image_proj`` is the Resampler (``latents`` [1, queries, hidden], ``proj_in`` from the CLIP encoder's hidden
    size ``embed_dim``, four blocks ``layers.i.0`` (``norm1``, ``norm2``, ``to_q``, ``to_kv``, ``to_out``) and
    ``layers.i.1`` (LayerNorm, Linear, GELU, Linear), ``proj_out`` to the cross-attention width and ``norm_out``);
    diffusers reads one head per 64 channels of ``to_q``. ``ip_adapter`` as for FaceID."""
    weight = seeded_weights(SEED + 2)
    hidden, output = RESAMPLER_HIDDEN, unet.config.cross_attention_dim
    image_proj = {
        "latents": weight(1, RESAMPLER_QUERIES, hidden),
        "proj_in.weight": weight(hidden, embed_dim),
        "proj_in.bias": torch.zeros(hidden),
        "proj_out.weight": weight(output, hidden),
        "proj_out.bias": torch.zeros(output),
        "norm_out.weight": torch.ones(output),
        "norm_out.bias": torch.zeros(output),
    }
    for layer in range(RESAMPLER_DEPTH):
        block = f"layers.{layer}"
        for norm in (f"{block}.0.norm1", f"{block}.0.norm2", f"{block}.1.0"):
            image_proj[f"{norm}.weight"], image_proj[f"{norm}.bias"] = torch.ones(hidden), torch.zeros(hidden)
        image_proj[f"{block}.0.to_q.weight"] = weight(hidden, hidden)
        image_proj[f"{block}.0.to_kv.weight"] = weight(2 * hidden, hidden)
        image_proj[f"{block}.0.to_out.weight"] = weight(hidden, hidden)
        image_proj[f"{block}.1.1.weight"] = weight(4 * hidden, hidden)
        image_proj[f"{block}.1.3.weight"] = weight(hidden, 4 * hidden)
    return {"image_proj": image_proj, "ip_adapter": ip_adapter_attention_state(unet, weight)}


def seeded_weights(seed: int) -> Callable[..., torch.Tensor]:
    """``weight(*shape)``: Gaussian weights scaled by the fan-in, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    return lambda *shape: torch.randn(*shape, generator=generator) / shape[-1] ** 0.5


def ip_adapter_attention_state(
    unet: UNet2DConditionModel, weight: Callable[..., torch.Tensor]
) -> dict[str, torch.Tensor]:
    """An IP-Adapter's ``ip_adapter`` part: ``{k}.to_k_ip`` / ``{k}.to_v_ip`` per cross-attention processor,
    k = 1, 3, 5, … in ``unet.attn_processors`` order."""
    cross_attention_dim = unet.config.cross_attention_dim
    ip_adapter = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            hidden_size = unet.get_submodule(name.removesuffix(".processor")).to_q.out_features
            for projection in ("to_k_ip", "to_v_ip"):
                ip_adapter[f"{index}.{projection}.weight"] = weight(hidden_size, cross_attention_dim)
    return ip_adapter


def build_clip_face_encoder(device: torch.device, dtype: torch.dtype) -> ClipFaceEncoder:
    """A two-layer CLIP vision tower on 224² inputs (patches of 32) with CLIP's preprocessing: the Plus-face
    adapter's image encoder, as ``CLIPVisionModelWithProjection`` like h94's ``models/image_encoder``."""
    torch.manual_seed(SEED + 3)
    with torch.device(device):
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VISION))
    return ClipFaceEncoder(model.to(dtype).eval(), clip_processor(CLIP_VISION["image_size"]))


def write_arcface_onnx(path: Path) -> Path:
    """A small random-weight recognizer with ArcFace's signature (N×3×112×112 → N×512), which insightface's
    model zoo routes to ``ArcFaceONNX`` exactly as it does the production ``w600k_r50.onnx``."""
    rng = np.random.default_rng(SEED + 2)
    conv = rng.standard_normal((16, 3, 8, 8)).astype(np.float32) / 8.0
    dense = rng.standard_normal((16 * 14 * 14, IDENTITY_EMBED_DIM)).astype(np.float32) / 56.0
    nodes = [
        # named Sub…/Mul… so ArcFaceONNX sees the in-graph normalisation and feeds raw pixels, as for w600k_r50
        helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
        helper.make_node("Mul", ["centred", "inv_std"], ["normalised"], name="Mul_1"),
        helper.make_node("Conv", ["normalised", "conv_w"], ["features"], strides=[8, 8]),
        helper.make_node("Relu", ["features"], ["activated"]),
        helper.make_node("Flatten", ["activated"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "dense_w"], ["fc1"]),
    ]
    initializers = [
        numpy_helper.from_array(np.array([127.5], dtype=np.float32), "mean"),
        numpy_helper.from_array(np.array([1 / 127.5], dtype=np.float32), "inv_std"),
        numpy_helper.from_array(conv, "conv_w"),
        numpy_helper.from_array(dense, "dense_w"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", IDENTITY_EMBED_DIM])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def rrdbnet_state_dict(
    scale: int, features: int = RRDB_FEATURES, blocks: int = RRDB_BLOCKS
) -> dict[str, dict[str, torch.Tensor]]:
    """A Real-ESRGAN RRDBNet state dict (``full_size`` sizes it as RealESRGAN_x4plus / x2plus: 64 features,
    23 blocks, 16.7M parameters) with the official basicsr key names (``conv_first``, ``body.i.rdbj.convk``,
    ``conv_up1`` …) wrapped in ``params_ema``; ×2 models see a pixel-unshuffled 12-channel input. Seeded weights:
    identity kernels on the image path and basicsr's ``default_init_weights`` (Kaiming × 0.1) in the residual
    dense blocks, so the upscaler is a nearest-neighbour upscaler plus a small random residual and outputs stay
    finite and viewable."""
    generator = torch.Generator().manual_seed(SEED + 10 + scale)
    in_channels = 3 * (4 if scale == 2 else 1)

    def kaiming(out_channels: int, in_channels: int, gain: float = 0.1) -> torch.Tensor:
        std = gain * (2.0 / (in_channels * 9)) ** 0.5
        return torch.randn(out_channels, in_channels, 3, 3, generator=generator) * std

    def identity_conv(out_channels: int, in_channels: int, pick: int = 1) -> torch.Tensor:
        kernel = torch.zeros(out_channels, in_channels, 3, 3)
        for channel in range(3):
            for sub_pixel in range(pick):
                kernel[channel, channel * pick + sub_pixel, 1, 1] = 1.0 / pick
        return kernel

    state = {
        "conv_first.weight": identity_conv(features, in_channels, pick=in_channels // 3),
        "conv_first.bias": torch.zeros(features),
    }
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out_channels = features if conv == 5 else RRDB_GROWTH
                prefix = f"body.{block}.rdb{rdb}.conv{conv}"
                state[f"{prefix}.weight"] = kaiming(out_channels, features + (conv - 1) * RRDB_GROWTH)
                state[f"{prefix}.bias"] = torch.zeros(out_channels)
    # each RRDB returns 0.2 × (its input carried through three RDBs) + its input, ~1.2× its input: damp the trunk
    # output by that growth so it stays a small residual on the image path
    state["conv_body.weight"] = kaiming(features, features, gain=0.1 / 1.2**blocks)
    state["conv_body.bias"] = torch.zeros(features)
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        state[f"{name}.weight"] = identity_conv(features, features)
        state[f"{name}.bias"] = torch.zeros(features)
    state["conv_last.weight"] = identity_conv(3, features)
    state["conv_last.bias"] = torch.zeros(3)
    return {"params_ema": state}


def build_face_restorer(device: torch.device) -> FaceRestorer:
    """Classical restoration: a random-weight GFPGAN would destroy the face (the device does not matter)."""
    return ClassicalFaceRestorer()


def build_safety_checker(device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    """A two-layer CLIP vision tower on 32² inputs with the checker's head."""
    return random_safety_checker(SAFETY_VISION, SAFETY_PROJECTION_DIM, device, dtype)


def random_safety_checker(vision: dict, projection_dim: int, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    """``StableDiffusionSafetyChecker`` with a random vision tower of this config and the CLIP preprocessing at its
    input size. The concept embeddings and thresholds keep diffusers' initial values (all ones): a cosine never
    exceeds 1, so random weights flag nothing, and the check still runs on every candidate."""
    torch.manual_seed(SEED + 40)
    with torch.device(device):
        model = StableDiffusionSafetyChecker(CLIPConfig(vision_config=vision, projection_dim=projection_dim))
    return ClipSafetyChecker(model.to(dtype).eval(), clip_processor(vision["image_size"]))


def random_style_lora(unet: UNet2DConditionModel, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A seeded random style LoRA on every attention projection of ``unet`` in diffusers key naming
    (``unet.<module>.lora.down.weight`` / ``.lora.up.weight``, as ``save_lora_weights`` writes it), sized from the
    module shapes only (a UNet built on the meta device will do). Both factors are random: peft's default init
    zeroes the up factor, which would have no visible effect."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            down = torch.randn(rank, module.in_features, generator=generator) / module.in_features**0.5
            up = torch.randn(module.out_features, rank, generator=generator) / rank**0.5
            state[f"unet.{name}.lora.down.weight"] = down
            state[f"unet.{name}.lora.up.weight"] = up
    return state
