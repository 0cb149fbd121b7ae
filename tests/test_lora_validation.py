"""Uploaded LoRAs: what is refused (each with a message naming the problem) and what loads."""

from __future__ import annotations

import io
import pickle
import struct

import pytest
import torch
from safetensors.torch import save

from serve_app.pipeline.errors import InvalidStyleError
from serve_app.pipeline.lora_validation import LoraLimits, validate_lora
from serve_app.pipeline.models import tiny


@pytest.fixture(scope="module")
def good(models) -> dict[str, torch.Tensor]:
    return tiny.random_style_lora(models.diffusion.unet, seed=7)


def kohya(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same LoRA in kohya naming: lora_unet_<module_with_underscores>.lora_down.weight / lora_up / alpha."""
    renamed = {}
    for key, tensor in state.items():
        module, kind = key.removeprefix("unet.").rsplit(".lora.", 1)
        name = "lora_unet_" + module.replace(".", "_")
        renamed[f"{name}.lora_{kind}"] = tensor
        renamed[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0] if kind == "down.weight" else 4))
    return renamed


def test_diffusers_and_kohya_naming_load(models, good):
    assert validate_lora(models.diffusion, save(good)).rank == 4
    assert validate_lora(models.diffusion, save(kohya(good))).rank == 4
    assert "upload_dry_run" not in models.diffusion.get_list_adapters().get("unet", [])


def torch_checkpoint(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


REFUSED = {
    "pickle": (lambda good: pickle.dumps({"a": 1}), "pickle"),
    "renamed torch checkpoint": (torch_checkpoint, "pickle"),
    "truncated": (lambda good: save(good)[:-100], "truncated"),
    "not safetensors": (lambda good: b"GIF89a" + bytes(100), "not safetensors"),
    "header not json": (lambda good: struct.pack("<Q", 10) + b"not json!!" + bytes(8), "not JSON"),
    "wrong keys": (lambda good: save({"unet.no_such_block.to_q.lora.down.weight": torch.zeros(4, 32)}), "no module"),
    "foreign naming": (lambda good: save({"model.diffusion_model.x.weight": torch.zeros(2, 2)}), "no module"),
    "integer dtype": (lambda good: save({k: v.to(torch.int32) for k, v in good.items()}), "dtype"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_uploads_name_the_problem(models, good, case):
    make, message = REFUSED[case]
    with pytest.raises(InvalidStyleError, match=message) as error:
        validate_lora(models.diffusion, make(good))
    assert (error.value.code, error.value.http_status) == ("invalid_style", 422)


def test_rank_and_size_limits(models, good):
    big = tiny.random_style_lora(models.diffusion.unet, seed=8, rank=32)
    with pytest.raises(InvalidStyleError, match="rank 32 exceeds the limit of 16"):
        validate_lora(models.diffusion, save(big), LoraLimits(max_rank=16))
    with pytest.raises(InvalidStyleError, match="limit is 1000"):
        validate_lora(models.diffusion, save(good), LoraLimits(max_bytes=1000))
