"""Write the demo styles' LoRA files for the tiny base model (seeded, so re-running reproduces them).

    python scripts/make_demo_styles.py styles/
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

from safetensors.torch import save_file

from serve_app.pipeline.models import tiny
from serve_app.styles import StyleCatalog


def main(directory: str) -> None:
    unet = tiny.build_diffusion_pipeline().unet
    for style_id in StyleCatalog(Path(directory), require_lora=False).ids():
        path = Path(directory) / style_id / "lora.safetensors"
        save_file(tiny.random_style_lora(unet, seed=zlib.crc32(style_id.encode())), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "styles")
