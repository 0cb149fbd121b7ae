"""The ``full-size`` profile: the production architectures (SD1.5, IP-Adapter-FaceID SD1.5, an IResNet-50
shaped ArcFace recognizer, Real-ESRGAN x2plus/x4plus RRDBNets, GFPGAN v1.4, SD1.5's safety checker) with seeded
random weights, in the formats production weights come in, to benchmark speed without weight files. Function
names and return types mirror ``tiny`` so the two profiles are interchangeable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from onnx import TensorProto, helper, numpy_helper
from spandrel import ModelLoader
from spandrel.architectures.GFPGAN import GFPGAN
from transformers import CLIPTextConfig, CLIPTextModel

from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.execution import place_image_model
from serve_app.pipeline.restoration import FaceRestorer, NetworkFaceRestorer
from serve_app.pipeline.safety import SafetyChecker

RRDB_FEATURES = 64
RRDB_BLOCKS = 23
# IResNet-50 (insightface's w600k_r50): (width, blocks) per stage, each stage starting with a stride-2 block
IRESNET50_STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
CLIP_VIT_L14_VISION = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
}


def build_diffusion_pipeline(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """An SD1.5 text-to-image pipeline (UNet 859.5M, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M parameters)
    with random weights seeded by ``tiny.SEED``, built directly on ``device`` (on a GPU the random init is far
    faster than on CPU followed by a copy; ``"meta"`` builds the architecture without weights). Random values
    differ between CPU and GPU builds.

    The tokenizer is ``tiny.build_tokenizer()`` (byte-level characters, no merges): no CLIP BPE vocabulary is on
    disk. Its ids stay far below the text encoder's 49408-entry embedding, so every id is in range; prompts
    split into more tokens than the real tokenizer would make and are truncated at 77 as usual."""
    torch.manual_seed(tiny.SEED)
    tokenizer = tiny.build_tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                projection_dim=768,
                # the pooled output is read at the tokenizer's end-of-text id
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return tiny.assemble_pipeline(unet, vae, text_encoder, tokenizer, dtype)


def write_arcface_onnx(path: Path) -> Path:
    """A random-weight IResNet-50 recognizer with ``w600k_r50.onnx``'s signature (``input.1``: N×3×112×112 →
    N×512) and compute: 43.6M parameters (174 MB), 6.3 GMACs per face. Batch norms that follow a convolution are
    folded into its bias, as in an exported inference graph. insightface's model zoo routes it to
    ``ArcFaceONNX``; the in-graph Sub/Mul input normalisation is named so that ``ArcFaceONNX`` detects it and
    feeds raw 0–255 pixels."""
    rng = np.random.default_rng(tiny.SEED + 2)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def conv(x: str, name: str, c_in: int, c_out: int, kernel: int, stride: int, gain: float = 1.0) -> str:
        std = gain * (2.0 / (c_in * kernel * kernel)) ** 0.5
        w = constant(f"{name}.weight", rng.standard_normal((c_out, c_in, kernel, kernel), np.float32) * std)
        b = constant(f"{name}.bias", np.zeros(c_out))
        nodes.append(
            helper.make_node("Conv", [x, w, b], [name], name=name, strides=[stride] * 2, pads=[kernel // 2] * 4)
        )
        return name

    def prelu(x: str, name: str, channels: int) -> str:
        slope = constant(f"{name}.slope", np.full((channels, 1, 1), 0.25))
        nodes.append(helper.make_node("PRelu", [x, slope], [name], name=name))
        return name

    def batch_norm(x: str, name: str, channels: int) -> str:
        params = [constant(f"{name}.{p}", np.full(channels, v)) for p, v in (("scale", 1), ("bias", 0), ("mean", 0))]
        params.append(constant(f"{name}.var", np.ones(channels)))
        nodes.append(helper.make_node("BatchNormalization", [x, *params], [name], name=name, epsilon=1e-5))
        return name

    nodes += [
        helper.make_node("Sub", ["input.1", constant("mean", np.array([127.5]))], ["centred"], name="Sub_0"),
        helper.make_node("Mul", ["centred", constant("inv_std", np.array([1 / 127.5]))], ["normalised"], name="Mul_1"),
    ]
    x = prelu(conv("normalised", "conv1", 3, 64, 3, 1), "prelu", 64)
    c_in = 64
    for stage, (width, blocks) in enumerate(IRESNET50_STAGES, start=1):
        for block in range(blocks):
            name, stride = f"layer{stage}.{block}", 2 if block == 0 else 1
            branch = batch_norm(x, f"{name}.bn1", c_in)
            branch = prelu(conv(branch, f"{name}.conv1", c_in, width, 3, 1), f"{name}.prelu", width)
            # a damped residual branch keeps activations in range through the 24 blocks
            branch = conv(branch, f"{name}.conv2", width, width, 3, stride, gain=0.1)
            shortcut = conv(x, f"{name}.downsample", c_in, width, 1, stride) if block == 0 else x
            nodes.append(helper.make_node("Add", [branch, shortcut], [f"{name}.out"], name=f"{name}.add"))
            x, c_in = f"{name}.out", width
    x = batch_norm(x, "bn2", c_in)
    nodes.append(helper.make_node("Flatten", [x], ["flat"], name="flatten", axis=1))
    fc_in = c_in * 7 * 7
    fc_w = constant("fc.weight", rng.standard_normal((fc_in, tiny.IDENTITY_EMBED_DIM), np.float32) / fc_in**0.5)
    fc_b = constant("fc.bias", np.zeros(tiny.IDENTITY_EMBED_DIM))
    nodes.append(helper.make_node("Gemm", ["flat", fc_w, fc_b], ["fc1"], name="fc"))
    graph = helper.make_graph(
        nodes,
        "iresnet50_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["None", tiny.IDENTITY_EMBED_DIM])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def rrdbnet_state_dict(scale: int) -> dict[str, dict[str, torch.Tensor]]:
    """RealESRGAN_x4plus / x2plus-sized (64 features, 23 blocks, 16.7M parameters) random RRDBNet weights."""
    return tiny.rrdbnet_state_dict(scale, features=RRDB_FEATURES, blocks=RRDB_BLOCKS)


def build_face_restorer(device: torch.device) -> FaceRestorer:
    """GFPGAN v1.4's architecture with seeded random weights: production's restoration cost, not its output."""
    return NetworkFaceRestorer(place_image_model(ModelLoader().load_from_state_dict(gfpgan_state_dict()), device))


def build_safety_checker(device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    """SD1.5's safety checker architecture (CLIP ViT-L/14 vision tower on 224², 304.0M parameters with its head)."""
    return tiny.random_safety_checker(CLIP_VIT_L14_VISION, 768, device, dtype)


def gfpgan_state_dict() -> dict[str, torch.Tensor]:
    """GFPGAN v1.4 (GFPGANv1Clean, 512², spandrel fixes its size) with seeded random weights."""
    torch.manual_seed(tiny.SEED + 32)
    model = GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )
    return model.state_dict()
