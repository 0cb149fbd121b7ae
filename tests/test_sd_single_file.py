"""The production single-file loader reads an original-layout SD1.5 checkpoint offline and reproduces its weights."""

from __future__ import annotations

import socket

import pytest
import torch
from diffusers import StableDiffusionPipeline
from sd_single_file import build_sd15_structured_pipeline, write_config_folder, write_single_file_checkpoint


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"network access to {address!r} during an offline load")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_single_file_checkpoint_loads_offline_with_identical_weights(tmp_path, no_network):
    original = build_sd15_structured_pipeline()
    checkpoint = write_single_file_checkpoint(original, tmp_path / "tiny-sd15.safetensors")
    config = write_config_folder(original, tmp_path / "config")

    loaded = StableDiffusionPipeline.from_single_file(
        str(checkpoint),
        config=str(config),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )

    for name in ("unet", "vae", "text_encoder"):
        expected, actual = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert actual.keys() == expected.keys(), name
        unequal = [key for key, tensor in expected.items() if not torch.equal(actual[key], tensor)]
        assert not unequal, f"{name}: {unequal}"

    image = loaded(
        "a portrait", num_inference_steps=1, height=64, width=64, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
