"""Style LoRA adapters: real effect on the UNet, switching, and eviction that waits for runs in progress."""

from __future__ import annotations

import torch

from serve_app.pipeline.lora import StyleAdapters, adapter_name
from serve_app.pipeline.sampling import SamplingPlan, encode_conditioning, guided_noise, initial_latents
from serve_app.styles import StyleCatalog


def noise_of(pipe) -> torch.Tensor:
    plan = SamplingPlan("a portrait", "", torch.nn.functional.normalize(torch.ones(512), dim=0), (1,), 64, 4, 7.0, 0.8, 0.5)
    conditioning = encode_conditioning(pipe, [plan])
    return guided_noise(pipe, initial_latents(pipe, plan.seeds, 64), torch.tensor(500), conditioning, (0.0, 1.0))


def test_styles_change_the_unet_and_switch_back_exactly(models, styles_dir):
    pipe, catalog = models.diffusion, StyleCatalog(styles_dir)
    adapters = StyleAdapters(pipe)
    outputs = {}
    for style in ("film-noir", "summer-beach", "film-noir"):
        found = catalog.get(style)
        adapters.load(found.versioned_id, found.read_lora)
        with adapters.active(found.versioned_id, found.manifest.lora.scale):
            outputs.setdefault(style, []).append(noise_of(pipe))
    assert (outputs["film-noir"][0] - outputs["summer-beach"][0]).abs().max() > 1e-4
    assert torch.equal(outputs["film-noir"][0], outputs["film-noir"][1])
    for style in ("film-noir", "summer-beach"):
        adapters.release(catalog.get(style).versioned_id)
        assert adapter_name(catalog.get(style).versioned_id) not in adapters.loaded()


def test_release_during_a_run_waits_for_the_run(models, styles_dir):
    pipe, style = models.diffusion, StyleCatalog(styles_dir).get("xmas-sweater")
    adapters = StyleAdapters(pipe)
    adapters.load(style.versioned_id, style.read_lora)
    with adapters.active(style.versioned_id, 1.0):
        adapters.release(style.versioned_id)  # e.g. LRU eviction while a batch samples
        assert adapter_name(style.versioned_id) in adapters.loaded()
        assert not adapters.is_loaded(style.versioned_id)  # a new request would load it again
    assert adapter_name(style.versioned_id) not in adapters.loaded()
    adapters.release(style.versioned_id)  # idempotent


def test_reloading_a_released_style_cancels_the_pending_unload(models, styles_dir):
    pipe, style = models.diffusion, StyleCatalog(styles_dir).get("xmas-sweater")
    adapters = StyleAdapters(pipe)
    adapters.load(style.versioned_id, style.read_lora)
    with adapters.active(style.versioned_id, 1.0):
        adapters.release(style.versioned_id)
        adapters.load(style.versioned_id, style.read_lora)
    assert adapters.is_loaded(style.versioned_id)
    adapters.release(style.versioned_id)
    assert adapter_name(style.versioned_id) not in adapters.loaded()
