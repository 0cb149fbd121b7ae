"""Style LoRA adapters on the diffusion pipeline (diffusers/peft): load once under the versioned style id,
activate per request, unload on eviction."""

from __future__ import annotations

import threading
from pathlib import Path

from diffusers import StableDiffusionPipeline


class StyleAdapters:
    """The LoRA adapters loaded on one pipeline, keyed by versioned style id (``id@version``)."""

    def __init__(self, pipe: StableDiffusionPipeline) -> None:
        self.pipe = pipe
        self._lock = threading.Lock()

    @staticmethod
    def adapter_name(versioned_id: str) -> str:
        # peft adapter names become module attribute names: no '@' or '.'.
        return versioned_id.replace("@", "__v").replace(".", "_")

    def loaded(self) -> list[str]:
        return list(self.pipe.get_list_adapters().get("unet", []))

    def load(self, versioned_id: str, lora_path: Path) -> None:
        name = self.adapter_name(versioned_id)
        with self._lock:
            if name not in self.loaded():
                self.pipe.load_lora_weights(str(lora_path.parent), weight_name=lora_path.name, adapter_name=name)

    def activate(self, versioned_id: str, weight: float) -> None:
        self.pipe.set_adapters([self.adapter_name(versioned_id)], adapter_weights=[weight])

    def unload(self, versioned_id: str) -> None:
        name = self.adapter_name(versioned_id)
        with self._lock:
            if name in self.loaded():
                self.pipe.delete_adapters(name)
