"""Style LoRA adapters on one diffusion pipeline (diffusers/peft): loaded once under the versioned style id,
activated per run, pinned while a run uses them, and unloaded when released — at once, or when the last run
using the style ends (a cache may evict a style that a running batch still uses). ``style_adapters`` picks the
mode for a pipeline.

``PerStyleAdapters`` loads one peft adapter per style. With a compiled UNet (the pipeline has a slot, see
``create_slot``) module structure must never change after compilation, so ``HotSwapAdapters`` uses one adapter slot,
created at start-up at the target rank on every module a style may target (a zero LoRA), and hot-swaps a run's style
into it (``load_lora_weights(..., hotswap=True)``): loaded styles wait in host memory, and their weight scales the
slot's scaling tensors in place.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils.hotswap import prepare_model_for_compiled_hotswap
from safetensors.torch import load as load_safetensors

from serve_app.pipeline.errors import InvalidLoraError, StyleIncompatibleError
from serve_app.pipeline.lora_validation import base_modules, dry_run_load, inspect_lora

HOTSWAP_SLOT = "style_slot"
# What style LoRAs (diffusers/kohya) target in the UNet: attention, transformer projections, feed-forwards. A
# style targeting other modules (e.g. resnet convolutions) cannot be hot-swapped; neither can text-encoder
# LoRAs (transformers 5's PEFT integration needs a newer peft than the pinned 0.21, in both modes).
UNET_SLOT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]


def adapter_name(versioned_id: str) -> str:
    """peft adapter names become module attribute names: no '@' or '.'."""
    return versioned_id.replace("@", "__v").replace(".", "_")


class StyleAdapters(Protocol):
    """The LoRA adapters loaded on one pipeline, keyed by versioned style id (``id@version``). Thread-safe."""

    def loaded(self) -> list[str]:
        """The adapter names of the loaded styles (``adapter_name``)."""

    def is_loaded(self, versioned_id: str) -> bool:
        """Loaded and not released (a released style that a run still pins is loaded again by a new request)."""

    def load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        """Load the style's LoRA (``read_lora`` returns the safetensors bytes; called only if not loaded yet)."""

    def release(self, versioned_id: str) -> None:
        """Unload now, or when the last run pinning the style ends. Idempotent."""

    def active(self, versioned_id: str, weight: float) -> AbstractContextManager[None]:
        """Pin the style and make it the only active adapter for the duration of a run."""

    def dry_run(self, data: bytes) -> None:
        """Load a LoRA once to prove it fits, leaving no trace."""


def style_adapters(pipe: StableDiffusionPipeline) -> StyleAdapters:
    """Hot-swaps into the pipeline's slot when it has one (``create_slot``), else one adapter per style."""
    slot = getattr(pipe.unet, "peft_config", {}).get(HOTSWAP_SLOT)
    return PerStyleAdapters(pipe) if slot is None else HotSwapAdapters(pipe, slot.r)


class PinnedAdapters(ABC):
    """What both modes share: runs pin a style, and releasing a pinned style unloads it when its last run ends
    (a cache may evict a style that a running batch still uses). One lock orders loads, activations and unloads."""

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._released: set[str] = set()

    @abstractmethod
    def loaded(self) -> list[str]: ...

    def is_loaded(self, versioned_id: str) -> bool:
        with self._lock:
            return adapter_name(versioned_id) in self.loaded() and versioned_id not in self._released

    def load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        with self._lock:
            self._released.discard(versioned_id)
            if adapter_name(versioned_id) not in self.loaded():
                self._load(versioned_id, read_lora)

    def release(self, versioned_id: str) -> None:
        with self._lock:
            self._released.add(versioned_id)
            if not self._pins[versioned_id]:
                self._unload(versioned_id)

    @contextmanager
    def active(self, versioned_id: str, weight: float) -> Iterator[None]:
        with self._lock:
            self._activate(versioned_id, weight)  # first: a style that fails to activate is not left pinned
            self._pins[versioned_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[versioned_id] -= 1
                if not self._pins[versioned_id] and versioned_id in self._released:
                    self._unload(versioned_id)

    def _unload(self, versioned_id: str) -> None:
        self._released.discard(versioned_id)
        del self._pins[versioned_id]
        self._remove(versioned_id)

    @abstractmethod
    def _load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None: ...

    @abstractmethod
    def _activate(self, versioned_id: str, weight: float) -> None: ...

    @abstractmethod
    def _remove(self, versioned_id: str) -> None: ...


class PerStyleAdapters(PinnedAdapters):
    """One peft adapter per loaded style; a run sets its style as the only active adapter."""

    def loaded(self) -> list[str]:
        return list(self.pipe.get_list_adapters().get("unet", []))

    def dry_run(self, data: bytes) -> None:
        dry_run_load(self.pipe, data)

    def _load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        with incompatible_as_error(versioned_id):
            self.pipe.load_lora_weights(load_safetensors(read_lora()), adapter_name=adapter_name(versioned_id))

    def _activate(self, versioned_id: str, weight: float) -> None:
        self.pipe.set_adapters([adapter_name(versioned_id)], adapter_weights=[weight])

    def _remove(self, versioned_id: str) -> None:
        if adapter_name(versioned_id) in self.loaded():
            self.pipe.delete_adapters(adapter_name(versioned_id))


class HotSwapAdapters(PinnedAdapters):
    """A compiled UNet's one slot (``create_slot``, at ``slot_rank``): loaded styles wait in host memory and a run
    swaps its style in, unless the slot already holds it at that weight."""

    def __init__(self, pipe: StableDiffusionPipeline, slot_rank: int) -> None:
        super().__init__(pipe)
        self._slot_rank = slot_rank
        self._parked: dict[str, dict[str, torch.Tensor]] = {}
        self._slot: tuple[str, float] | None = None

    def loaded(self) -> list[str]:
        return [adapter_name(versioned_id) for versioned_id in self._parked]

    def dry_run(self, data: bytes) -> None:
        """The next run swaps its own style in again."""
        summary = inspect_lora(data, base_modules(self.pipe))
        if outside := sorted(target for target in summary.targets if not slot_holds(target)):
            raise InvalidLoraError(
                f"the LoRA targets modules the compiled UNet's style slot does not hold: {', '.join(outside[:5])}"
            )
        with self._lock:
            self._swap(load_safetensors(data), 1.0)

    def _load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        self._parked[versioned_id] = load_safetensors(read_lora())

    def _activate(self, versioned_id: str, weight: float) -> None:
        with incompatible_as_error(versioned_id):
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

    def _remove(self, versioned_id: str) -> None:
        self._parked.pop(versioned_id, None)


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
