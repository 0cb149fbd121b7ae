"""Style LoRA adapters on one diffusion pipeline (diffusers/peft): loaded once under the versioned style id,
activated per run, pinned while a run uses them, and unloaded when released — at once, or when the last run
using the style ends (a cache may evict a style that a running batch still uses)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from diffusers import StableDiffusionPipeline
from safetensors.torch import load as load_safetensors


def adapter_name(versioned_id: str) -> str:
    """peft adapter names become module attribute names: no '@' or '.'."""
    return versioned_id.replace("@", "__v").replace(".", "_")


class StyleAdapters:
    """The LoRA adapters loaded on one pipeline, keyed by versioned style id (``id@version``). Thread-safe."""

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()
        self._pins: Counter[str] = Counter()
        self._released: set[str] = set()

    def loaded(self) -> list[str]:
        return list(self.pipe.get_list_adapters().get("unet", []))

    def is_loaded(self, versioned_id: str) -> bool:
        with self._lock:
            return adapter_name(versioned_id) in self.loaded() and versioned_id not in self._released

    def load(self, versioned_id: str, read_lora: Callable[[], bytes]) -> None:
        """Load the style's LoRA (``read_lora`` returns the safetensors bytes; called only if not loaded yet)."""
        name = adapter_name(versioned_id)
        with self._lock:
            self._released.discard(versioned_id)
            if name not in self.loaded():
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
            self.pipe.set_adapters([adapter_name(versioned_id)], adapter_weights=[weight])
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
        if adapter_name(versioned_id) in self.loaded():
            self.pipe.delete_adapters(adapter_name(versioned_id))
