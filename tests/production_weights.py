"""A production weights folder in miniature: every file ``configs/weights.yaml`` (or
``configs/weights-commercial.yaml``) fetches, at the same path and in the same format as the real one, holding
tiny random-weight models — so ``weights verify`` and every production and commercial loader run for real in CI.
Pickle checkpoints are written as the hub has them (``.pth``/``.bin``) into a fake hub folder, so ``weights fetch``
converts them as it does the real downloads. Packaged models (``package:``) are not on the hub: nothing writes
them here."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from tiny_onnx import write_inswapper_onnx, write_scrfd_onnx
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    SegformerConfig,
    SegformerForSemanticSegmentation,
)

from serve_app.pipeline.models import tiny
from serve_app.pipeline.models.full_size import gfpgan_state_dict
from serve_app.pipeline.models.weights import WeightsManifest, load_manifest

FACE_PARSING_LABELS = [
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
]
IDENTITY_LORA_RANK = 4
SPECIAL_TOKENS = {
    "bos_token": "<|startoftext|>",
    "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>",
    "unk_token": "<|endoftext|>",
}


def manifest_without_hashes(path: Path | None = None) -> WeightsManifest:
    """A real manifest (same models, files, conversions; by default ``configs/weights.yaml``) minus the published
    hashes of the fetched files, which tiny files lack. Packaged files keep theirs: they are the real ones."""
    data = load_manifest(path).model_dump()
    for model in data["models"].values():
        if model["package"] is None:
            for weight in model["files"]:
                weight["sha256"] = None
    return WeightsManifest.model_validate(data)


def saved_manifest(folder: Path, manifest: WeightsManifest, name: str) -> Path:
    """``manifest`` written as YAML to ``folder/name``, for ``--manifest`` and ``weights_manifest``."""
    path = folder / name
    path.write_text(yaml.safe_dump(manifest.model_dump()))
    return path


@contextlib.contextmanager
def fake_hub(folder: Path, manifest: WeightsManifest) -> Iterator[Path]:
    """A fake Hugging Face Hub in ``folder`` serving ``manifest``'s repo files, removed afterwards (hundreds of MB)."""
    write_hub(folder, manifest)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def write_hub(hub: Path, manifest: WeightsManifest) -> None:
    """Every fetched file at ``hub/<repo>/<file>``, as the Hugging Face Hub serves them (production's and the
    commercial manifest's models; only those ``manifest`` names are written)."""
    sources = {
        "base": write_base_model,
        "ip_adapter_faceid": write_ip_adapter,
        "ip_adapter_plus_face": write_ip_adapter_plus_face,
        "image_encoder": write_image_encoder,
        "face_detector": lambda folder, files: write_scrfd_onnx(folder / files[0]),
        "face_recognizer": lambda folder, files: tiny.write_arcface_onnx(folder / files[0]),
        "face_swapper": lambda folder, files: write_inswapper_onnx(folder / files[0]),
        "face_parser": write_face_parser,
        "upscaler_x2": lambda folder, files: torch.save(tiny.rrdbnet_state_dict(2), folder / files[0]),
        "upscaler_x4": lambda folder, files: torch.save(tiny.rrdbnet_state_dict(4), folder / files[0]),
        "face_restorer": lambda folder, files: torch.save({"params_ema": gfpgan_state_dict()}, folder / files[0]),
        "safety_checker": write_safety_checker,
    }
    for name, model in manifest.models.items():
        if model.package is not None:
            continue  # shipped in an installed package, never fetched
        folder = hub / model.repo
        files = [weight.file for weight in model.files]
        for file in files:
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
        sources[name](folder, files)
        missing = [file for file in files if not (folder / file).is_file()]
        assert not missing, f"the tiny {name} lacks {missing}"


def hub_downloader(hub: Path):
    """A ``weights.fetch`` downloader reading the fake hub (revision ignored)."""

    def download(repo: str, file: str, revision: str, folder: Path) -> Path:
        target = folder / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hub / repo / file, target)
        return target

    return download


def fake_hf_hub_download(hub: Path):
    """A stand-in for ``huggingface_hub.hf_hub_download`` (as ``weights.hub_download`` calls it) reading the fake
    hub: what ``python -m serve_app weights fetch`` downloads when it is monkeypatched in. Records each call."""

    def hf_hub_download(repo_id: str, filename: str, *, revision: str, local_dir: Path, **_) -> str:
        hf_hub_download.calls.append(f"{repo_id}/{filename}@{revision}")
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(hub / repo_id / filename, target)
        return str(target)

    hf_hub_download.calls = []
    return hf_hub_download


def write_base_model(folder: Path, files: list[str]) -> None:
    """The diffusers folder with fp16 weight variants, tokenizer as slow-tokenizer files (vocab + merges)."""
    pipe = tiny.build_diffusion_pipeline().to(torch.float16)
    pipe.save_pretrained(folder, variant="fp16")
    tokenizer = folder / "tokenizer"
    shutil.rmtree(tokenizer)
    tokenizer.mkdir()
    tiny.write_tokenizer_files(tokenizer)
    (tokenizer / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS))
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **SPECIAL_TOKENS}))


def write_safety_checker(folder: Path, files: list[str]) -> None:
    """The pipeline folder's ``safety_checker`` (fp16 variant) and ``feature_extractor``, as diffusers saves them."""
    checker = tiny.build_safety_checker(torch.device("cpu"), torch.float16)
    checker.model.save_pretrained(folder / "safety_checker", variant="fp16")
    checker.processor.save_pretrained(folder / "feature_extractor")


def write_ip_adapter(folder: Path, files: list[str]) -> None:
    """The pickled ``{"image_proj": …, "ip_adapter": …}`` of ip-adapter-faceid_sd15.bin, with its LoRA."""
    unet = tiny.build_diffusion_pipeline().unet
    state = tiny.ip_adapter_faceid_state_dict(unet)
    state["ip_adapter"].update(identity_lora(unet))
    torch.save(state, folder / files[0])


def write_ip_adapter_plus_face(folder: Path, files: list[str]) -> None:
    """h94's ip-adapter-plus-face_sd15.safetensors: flat ``image_proj.*`` (the Resampler, reading the tiny CLIP
    tower's hidden size) and ``ip_adapter.*`` keys for the tiny UNet's cross-attention width, in fp16 as published."""
    unet = tiny.build_diffusion_pipeline().unet
    state = tiny.ip_adapter_plus_face_state_dict(unet)
    flat = {f"{part}.{key}": tensor.half() for part, tensors in state.items() for key, tensor in tensors.items()}
    save_file(flat, str(folder / files[0]))


def write_image_encoder(folder: Path, files: list[str]) -> None:
    """h94's ``models/image_encoder``: a ``CLIPVisionModelWithProjection`` saved by ``save_pretrained``
    (config.json + model.safetensors), here the tiny tower of ``tiny.CLIP_VISION``."""
    torch.manual_seed(tiny.SEED + 32)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny.CLIP_VISION))
    model.save_pretrained(folder / Path(files[0]).parent, safe_serialization=True)


def identity_lora(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """FaceID's LoRA keys: ``{k}.to_{q,k,v,out}_lora.{down,up}.weight`` for every attention processor k."""
    generator = torch.Generator().manual_seed(tiny.SEED + 30)
    lora = {}
    for index, name in enumerate(unet.attn_processors):
        attention = unet.get_submodule(name.removesuffix(".processor"))
        for projection, layer in (
            ("to_q", attention.to_q),
            ("to_k", attention.to_k),
            ("to_v", attention.to_v),
            ("to_out", attention.to_out[0]),
        ):
            lora[f"{index}.{projection}_lora.down.weight"] = (
                torch.randn(IDENTITY_LORA_RANK, layer.in_features, generator=generator) * 0.01
            )
            lora[f"{index}.{projection}_lora.up.weight"] = (
                torch.randn(layer.out_features, IDENTITY_LORA_RANK, generator=generator) * 0.01
            )
    return lora


def write_face_parser(folder: Path, files: list[str]) -> None:
    """A tiny SegFormer with the 19 CelebAMask-HQ labels of jonathandinu/face-parsing."""
    torch.manual_seed(tiny.SEED + 31)
    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 1],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        id2label=dict(enumerate(FACE_PARSING_LABELS)),
        label2id={label: index for index, label in enumerate(FACE_PARSING_LABELS)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(folder)
