"""Write the demo styles' LoRA files (seeded, so re-running reproduces them) for a profile's base model: the
tiny UNet (the shipped styles/) or SD1.5 (full-size, for benchmarks; real styles come from curators).

    python scripts/make_demo_styles.py styles/
    python scripts/make_demo_styles.py /tmp/sd15-styles --profile full-size   # copy styles/ there first
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

from safetensors.torch import save_file

from serve_app.pipeline.models import full_size, tiny
from serve_app.styles.catalog import StyleCatalog


def write_demo_loras(directory: Path, profile: str = "tiny") -> list[Path]:
    builders = full_size if profile == "full-size" else tiny
    unet = builders.build_diffusion_pipeline(device="meta").unet  # shapes only
    written = []
    for style_id in StyleCatalog(directory, require_lora=False).ids():
        path = directory / style_id / "lora.safetensors"
        save_file(tiny.random_style_lora(unet, seed=zlib.crc32(style_id.encode())), path)
        written.append(path)
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, nargs="?", default=Path("styles"))
    parser.add_argument("--profile", choices=("tiny", "full-size"), default="tiny")
    arguments = parser.parse_args()
    for written in write_demo_loras(arguments.directory, arguments.profile):
        print(f"wrote {written}")
