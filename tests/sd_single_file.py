"""A tiny Stable Diffusion 1.5 *single-file* checkpoint for tests: a pipeline's UNet, VAE and text encoder written
in the original LDM/CompVis key layout (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.text_model.*``) as one ``.safetensors`` file like ``v1-5-pruned-emaonly.safetensors``,
which ``StableDiffusionPipeline.from_single_file(path, config=<diffusers folder>, local_files_only=True)`` reads.

The key maps are the inverse of diffusers' single-file conversion (``diffusers.loaders.single_file_utils``; the
diffusers repo's ``scripts/convert_diffusers_to_original_stable_diffusion.py`` hard-codes the same maps for SD1.5's
block counts, which are derived from the model here)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer.text_model."

# Renames of a block's first name component, diffusers → LDM, applied under a block prefix.
Renames = dict[str, str]
UNET_RESNET: Renames = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}
VAE_RESNET: Renames = {"conv_shortcut.": "nin_shortcut."}
VAE_ATTENTION: Renames = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}
VAE_ATTENTION_CONVS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")


def write_single_file_checkpoint(pipe: StableDiffusionPipeline, path: Path) -> Path:
    """Write ``pipe``'s UNet, VAE and CLIP text encoder as one original-layout SD1.5 ``.safetensors`` checkpoint."""
    state = {
        **_rename(pipe.unet.state_dict(), _unet_prefixes(pipe.unet), LDM_UNET_PREFIX),
        **_vae_to_ldm(pipe.vae),
        # ``CLIPTextModel`` is flattened in transformers >= 5.6 (no ``text_model.`` level in its own keys).
        **{LDM_CLIP_PREFIX + key: tensor for key, tensor in pipe.text_encoder.state_dict().items()},
    }
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, path)
    return path


def _rename(
    state: dict[str, torch.Tensor], prefixes: dict[str, tuple[str, Renames]], ldm_prefix: str
) -> dict[str, torch.Tensor]:
    """Map each key through its longest matching diffusers prefix to the LDM prefix, renaming the first name
    component under it; a key no prefix covers is an error, so no weight is silently dropped."""
    renamed = {}
    for key, tensor in state.items():
        prefix = max((p for p in prefixes if key.startswith(p)), key=len, default=None)
        if prefix is None:
            raise KeyError(f"no LDM name for diffusers key {key!r}")
        target, renames = prefixes[prefix]
        suffix = key.removeprefix(prefix)
        for old, new in renames.items():
            if suffix.startswith(old):
                suffix = new + suffix.removeprefix(old)
                break
        renamed[ldm_prefix + target + suffix] = tensor
    return renamed


def _unet_prefixes(unet: UNet2DConditionModel) -> dict[str, tuple[str, Renames]]:
    """LDM numbers the UNet's input/output blocks flat: down level i holds ``input_blocks`` 1 + i·(L+1) … with its
    downsampler last, up level i holds ``output_blocks`` i·(L+1) … with the upsampler in its last one (after the
    attention when there is one); L = layers_per_block."""
    per_level = unet.config.layers_per_block + 1
    prefixes: dict[str, tuple[str, Renames]] = {
        "time_embedding.linear_1.": ("time_embed.0.", {}),
        "time_embedding.linear_2.": ("time_embed.2.", {}),
        "conv_in.": ("input_blocks.0.0.", {}),
        "conv_norm_out.": ("out.0.", {}),
        "conv_out.": ("out.2.", {}),
        "mid_block.attentions.0.": ("middle_block.1.", {}),
    }
    for j in range(len(unet.mid_block.resnets)):
        prefixes[f"mid_block.resnets.{j}."] = (f"middle_block.{2 * j}.", UNET_RESNET)
    for i, block in enumerate(unet.down_blocks):
        for j in range(len(block.resnets)):
            index = 1 + i * per_level + j
            prefixes[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{index}.0.", UNET_RESNET)
            if hasattr(block, "attentions"):
                prefixes[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{index}.1.", {})
        if block.downsamplers is not None:
            prefixes[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * per_level}.0.op.", {})
    for i, block in enumerate(unet.up_blocks):
        for j in range(len(block.resnets)):
            index = i * per_level + j
            prefixes[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{index}.0.", UNET_RESNET)
            if hasattr(block, "attentions"):
                prefixes[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{index}.1.", {})
        if block.upsamplers is not None:
            position = 2 if hasattr(block, "attentions") else 1
            prefixes[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{(i + 1) * per_level - 1}.{position}.", {})
    return prefixes


def _vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """LDM numbers the decoder's up levels in reverse and keeps the mid-block attention projections as 1×1 convs
    (diffusers' loader squeezes them back to linear weights)."""
    prefixes: dict[str, tuple[str, Renames]] = {
        "quant_conv.": ("quant_conv.", {}),
        "post_quant_conv.": ("post_quant_conv.", {}),
    }
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.conv_in."] = (f"{part}.conv_in.", {})
        prefixes[f"{part}.conv_out."] = (f"{part}.conv_out.", {})
        prefixes[f"{part}.conv_norm_out."] = (f"{part}.norm_out.", {})
        prefixes[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", VAE_ATTENTION)
        for j in range(len(getattr(vae, part).mid_block.resnets)):
            prefixes[f"{part}.mid_block.resnets.{j}."] = (f"{part}.mid.block_{j + 1}.", VAE_RESNET)
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            prefixes[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", VAE_RESNET)
        if block.downsamplers is not None:
            prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = (f"encoder.down.{i}.downsample.", {})
    levels = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = levels - 1 - i
        for j in range(len(block.resnets)):
            prefixes[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{level}.block.{j}.", VAE_RESNET)
        if block.upsamplers is not None:
            prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = (f"decoder.up.{level}.upsample.", {})
    state = _rename(vae.state_dict(), prefixes, LDM_VAE_PREFIX)
    for key, tensor in state.items():
        if ".mid.attn_1." in key and key.endswith(VAE_ATTENTION_CONVS):
            state[key] = tensor[:, :, None, None]
    return state
