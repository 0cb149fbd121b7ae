"""Write the demo styles' LoRA files for the tiny base model (seeded, so re-running reproduces them).

    python scripts/make_demo_styles.py styles/
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict
from safetensors.torch import save_file

from serve_app.pipeline.models import tiny
from serve_app.styles import StyleCatalog

LORA_RANK = 4
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_lora(style_id: str, path: Path) -> None:
    unet = tiny.build_diffusion_pipeline().unet
    torch.manual_seed(zlib.crc32(style_id.encode()))
    # init_lora_weights=False draws both LoRA matrices at random; peft's default zeroes B (no visible effect).
    unet.add_adapter(
        LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights=False, target_modules=LORA_TARGETS),
        adapter_name=style_id,
    )
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=style_id))
    save_file({f"unet.{key}": tensor.contiguous() for key, tensor in state.items()}, path)


def main(directory: str) -> None:
    for style in StyleCatalog(Path(directory), require_lora=False).list():
        write_lora(style.manifest.id, style.lora_path)
        print(f"wrote {style.lora_path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "styles")
