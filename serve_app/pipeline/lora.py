"""Style LoRA adapters on one diffusion pipeline (diffusers/peft): loaded once under the versioned style id,
activated per run, pinned while a run uses them, and unloaded when released — at once, or when the last run
using the style ends (a cache may evict a style that a running batch still uses).

With a compiled UNet (the pipeline has a slot, see ``create_slot``) module structure must never change after
compilation, so there is one adapter slot, created at start-up at the target rank on every module a style may
target (a zero LoRA), and a run's style is hot-swapped into it (``load_lora_weights(..., hotswap=True)``):
loaded styles wait in host memory, and their weight scales the slot's scaling tensors in place.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils.hotswap import prepare_model_for_compiled_hotswap
from safetensors.torch import load as load_safetensors

from serve_app.pipeline.errors import InvalidStyleError, StyleIncompatibleError
from serve_app.pipeline.lora_validation import base_modules, dry_run_load, inspect_lora

HOTSWAP_SLOT = "style_slot"
# What style LoRAs (diffusers/kohya) target in the UNet: attention, transformer projections, feed-forwards. A
# style targeting other modules (e.g. resnet convolutions) cannot be hot-swapped; neither can text-encoder
# LoRAs (transformers 5's PEFT integration needs a newer peft than the pinned 0.21, in both modes).
UNET_SLOT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def adapter_name(versioned_id: str) -> str:
    """peft adapter names become module attribute names: no '@' or '.'."""
    return versioned_id.replace("@", "__v").replace(".", "_")


class StyleAdapters:
    """The LoRA adapters loaded on one pipeline, keyed by versioned style id (``id@version``). Thread-safe."""

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        """Hot-swaps into the pipeline's slot when it has one (``create_slot``), else one adapter per style."""
        self.pipe = pipe
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._released: set[str] = set()
        slot = getattr(pipe.unet, "peft_config", {}).get(HOTSWAP_SLOT)
        self.hotswap, self._slot_rank = slot is not None, getattr(slot, "r", 0)
        self._parked: dict[str, dict[str, torch.Tensor]] = {}
        self._slot: tuple[str, float] | None = None

    def loaded(self) -> list[str]:
        if self.hotswap:
            return [adapter_name(versioned_id) for versioned_id in self._parked]
        return list(self.pipe.get_list_adapters().get("unet", []))

    def is_loaded(self, versioned_id: str) -> bool:
        with self._lock:
            return adapter_name(versioned_id) in self.loaded() and versioned_id not in self._released

    def load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        """Load the style's LoRA (``read_lora`` returns the safetensors bytes; called only if not loaded yet)."""
        name = adapter_name(versioned_id)
        with self._lock:
            self._released.discard(versioned_id)
            if name in self.loaded():
                return
            if self.hotswap:
                self._parked[versioned_id] = load_safetensors(read_lora())
                return
            with incompatible_as_error(versioned_id):
                self.pipe.load_lora_weights(load_safetensors(read_lora()), adapter_name=name)

    def release(self, versioned_id: str) -> None:
        """Unload now, or when the last run pinning the style ends. Idempotent."""
        with self._lock:
            self._released.add(versioned_id)
            if not self._pins[versioned_id]:
                self._unload(versioned_id)

    @contextmanager
    def active(self, versioned_id: str, weight: float) -> Iterator[None]:
        """Pin the style and make it the only active adapter for the duration of a run."""
        with self._lock:
            self._pins[versioned_id] += 1
            if self.hotswap:
                with incompatible_as_error(versioned_id):
                    self._swap_in(versioned_id, weight)
            else:
                self.pipe.set_adapters([adapter_name(versioned_id)], adapter_weights=[weight])
        try:
            yield
        finally:
            with self._lock:
                self._pins[versioned_id] -= 1
                if not self._pins[versioned_id] and versioned_id in self._released:
                    self._unload(versioned_id)

    def dry_run(self, data: bytes) -> None:
        """Load a LoRA once to prove it fits, leaving no trace (the next run swaps its own style in again)."""
        if not self.hotswap:
            dry_run_load(self.pipe, data)
            return
        summary = inspect_lora(data, base_modules(self.pipe))
        if outside := sorted(target for target in summary.targets if not slot_holds(target)):
            raise InvalidStyleError(
                f"the LoRA targets modules the compiled UNet's style slot does not hold: {', '.join(outside[:5])}"
            )
        with self._lock:
            self._swap(load_safetensors(data), 1.0)

    def _swap_in(self, versioned_id: str, weight: float) -> None:
        if self._slot != (versioned_id, weight):
            self._swap(self._parked[versioned_id], weight)
            self._slot = (versioned_id, weight)

    def _swap(self, lora: dict[str, torch.Tensor], weight: float) -> None:
        self._slot = None  # whatever the slot held is gone
        try:
            hot_swap(self.pipe, lora, weight)
        finally:
            if HOTSWAP_SLOT not in self.pipe.unet.peft_config:  # diffusers drops the adapter when a swap fails
                create_slot(self.pipe, self._slot_rank)

    def _unload(self, versioned_id: str) -> None:
        self._released.discard(versioned_id)
        del self._pins[versioned_id]
        if self.hotswap:
            self._parked.pop(versioned_id, None)
        elif adapter_name(versioned_id) in self.loaded():
            self.pipe.delete_adapters(adapter_name(versioned_id))


@contextmanager
def incompatible_as_error(versioned_id: str) -> Iterator[None]:
    """A library LoRA that does not fit the base model answers 409 ``style_incompatible``, not a server error."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError) as error:  # what diffusers/peft raise for a LoRA that does not fit
        raise StyleIncompatibleError(
            f"style {versioned_id} cannot be used with this service's base model: {str(error)[:300]}"
        ) from None


def create_slot(pipe: StableDiffusionPipeline, rank: int) -> None:
    """A zero LoRA of ``rank`` on every UNet module a style may target, with tensor scalings (compile-friendly);
    create it before compiling. Styles of a higher rank cannot be swapped in."""
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_SLOT_TARGETS)
    pipe.unet.add_adapter(config, adapter_name=HOTSWAP_SLOT)
    prepare_model_for_compiled_hotswap(pipe.unet, target_rank=rank, config=pipe.unet.peft_config)


def slot_holds(target: str) -> bool:
    """Whether the slot covers a LoRA target (``unet.<module>``, dotted or kohya-underscored)."""
    component, _, module = target.partition(".")
    return component == "unet" and any(module.endswith((name, name.replace(".", "_"))) for name in UNET_SLOT_TARGETS)


def hot_swap(pipe: StableDiffusionPipeline, lora: dict[str, torch.Tensor], weight: float) -> None:
    """Swap ``lora`` into the slot and scale it by ``weight`` in place. Every slot layer is reset first: peft
    zeroes the layers a style lacks, but not their scalings, which would compound the weights of later styles."""
    slot_layers = [m for m in pipe.unet.modules() if isinstance(m, LoraLayer) and HOTSWAP_SLOT in m.lora_B]
    for layer in slot_layers:
        layer.lora_B[HOTSWAP_SLOT].weight.data.zero_()
        layer.scaling[HOTSWAP_SLOT].fill_(1.0)
    pipe.load_lora_weights(dict(lora), adapter_name=HOTSWAP_SLOT, hotswap=True)
    for layer in slot_layers:
        layer.scaling[HOTSWAP_SLOT].mul_(weight)
