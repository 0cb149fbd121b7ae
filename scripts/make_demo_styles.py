"""Write the demo styles' LoRA files (seeded, so re-running reproduces them) for a profile's base model: the
tiny UNet (the shipped styles/) or SD1.5 (full-size, for benchmarks; real styles come from curators).

    python scripts/make_demo_styles.py styles/
    python scripts/make_demo_styles.py /tmp/sd15-styles --profile full-size   # copy styles/ there first

With ``--count N``, make a library of N styles instead (``demo-001`` … ``demo-NNN``, holiday-themed, with cheap
defaults for the profile), each with ``--versions V`` versions laid out as ``StyleCatalog`` reads them: version 1
in ``<id>/style.yaml`` + ``lora.safetensors``, version n ≥ 2 in ``<id>/<n>/style.yaml`` + ``lora.safetensors``:

    python scripts/make_demo_styles.py /tmp/library --count 50 --versions 2

From Python (a benchmark): ``make_library(directory, count, versions, profile) -> style ids``.
"""

from __future__ import annotations

import argparse
import hashlib
import zlib
from pathlib import Path

import yaml
from safetensors.torch import save, save_file

from serve_app.pipeline.models import full_size, tiny
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import LORA_FILE, MANIFEST_FILE, StyleManifest

HOLIDAYS = (
    ("christmas", "a red knitted christmas sweater, snowy evening, warm fairy lights bokeh", ["holiday", "winter"]),
    ("halloween", "a witch costume, carved pumpkins and candle light, misty night", ["holiday", "autumn"]),
    ("new-year", "a sequined party outfit, fireworks and golden confetti at midnight", ["holiday", "winter"]),
    ("valentine", "a red velvet outfit, rose petals and soft pink light", ["holiday", "romance"]),
    ("lunar-new-year", "a silk qipao, red lanterns and paper cut decorations", ["holiday", "winter"]),
    ("easter", "a pastel spring outfit, painted eggs and blossoming trees", ["holiday", "spring"]),
    ("diwali", "festive silk clothes, rows of oil lamps and rangoli", ["holiday", "autumn"]),
    ("thanksgiving", "a cosy flannel shirt, autumn leaves and a harvest table", ["holiday", "autumn"]),
    ("hanukkah", "a blue knitted sweater, a glowing menorah and winter windows", ["holiday", "winter"]),
    ("st-patricks", "a green tweed jacket, shamrocks and a lively pub", ["holiday", "spring"]),
    ("carnival", "a feathered carnival mask, streamers and a night parade", ["holiday", "summer"]),
    ("midsummer", "a flower crown, a meadow in the late evening sun", ["holiday", "summer"]),
)
"""Themes the library's styles cycle through (id, what the prompt puts around the subject, tags)."""

DEFAULTS = {
    # Cheap requests: the fewest steps, the smallest side the schema allows.
    "tiny": {"steps": 6, "guidance_scale": 6.5, "identity_weight": 0.8, "t1": 0.35, "size": 64},
    "full-size": {"steps": 20, "guidance_scale": 7.5, "identity_weight": 0.8, "t1": 0.35, "size": 512},
}


def _unet(profile: str):
    builders = full_size if profile == "full-size" else tiny
    return builders.build_diffusion_pipeline(device="meta").unet  # shapes only


def write_demo_loras(directory: Path, profile: str = "tiny") -> list[Path]:
    unet = _unet(profile)
    written = []
    for style_id in StyleCatalog(directory, require_lora=False).ids():
        path = directory / style_id / "lora.safetensors"
        save_file(tiny.random_style_lora(unet, seed=lora_seed(style_id, 1)), path)
        written.append(path)
    return written


def lora_seed(style_id: str, version: int) -> int:
    """The seed of a demo LoRA: version 1 (the style folder's) is seeded by the id alone, as the shipped styles'
    are; a later version by ``id@version``."""
    return zlib.crc32(style_id.encode() if version == 1 else f"{style_id}@{version}".encode())


def library_ids(count: int) -> list[str]:
    """The ids ``make_library`` gives ``count`` styles: ``demo-001`` …"""
    width = max(3, len(str(count)))
    return [f"demo-{number:0{width}d}" for number in range(1, count + 1)]


def library_manifest(style_id: str, number: int, version: int, profile: str, lora: bytes) -> StyleManifest:
    """The manifest of version ``version`` of the library's ``number``-th style (0-based), checked by the
    catalogue's own schema."""
    theme, scene, tags = HOLIDAYS[number % len(HOLIDAYS)]
    return StyleManifest(
        id=style_id,
        version=version,
        title=f"{theme.replace('-', ' ').title()} {number + 1}" + (f", version {version}" if version > 1 else ""),
        description=f"Demo {theme} style (random LoRA) for library-scale benchmarks.",
        prompt_template=f"studio portrait photo of {{subject}} in {scene}, soft light",
        negative_prompt="blurry, deformed face, watermark, text",
        lora={"file": LORA_FILE, "scale": 1.0, "sha256": hashlib.sha256(lora).hexdigest()},
        defaults=DEFAULTS[profile],
        tags=[*tags, theme],
    )


def make_library(directory: Path | str, count: int, versions: int = 1, profile: str = "tiny") -> list[str]:
    """Write ``count`` styles with ``versions`` versions each (seeded random LoRAs for ``profile``'s base model,
    so re-running writes the same bytes) into ``directory`` (created if missing; other styles there are left
    alone); returns the style ids, in order."""
    if count < 1 or versions < 1:
        raise ValueError("count and versions must be at least 1")
    directory = Path(directory)
    unet = _unet(profile)
    ids = library_ids(count)
    for number, style_id in enumerate(ids):
        for version in range(1, versions + 1):
            folder = directory / style_id if version == 1 else directory / style_id / str(version)
            folder.mkdir(parents=True, exist_ok=True)
            lora = save(tiny.random_style_lora(unet, seed=lora_seed(style_id, version)))
            manifest = library_manifest(style_id, number, version, profile, lora)
            (folder / LORA_FILE).write_bytes(lora)
            text = yaml.safe_dump(manifest.model_dump(mode="json", exclude_none=True), sort_keys=False)
            (folder / MANIFEST_FILE).write_text(text)
    StyleCatalog(directory)  # reads every version back: a library the service would refuse fails here
    return ids


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, nargs="?", default=Path("styles"))
    parser.add_argument("--profile", choices=("tiny", "full-size"), default="tiny")
    parser.add_argument("--count", type=int, help="make a library of this many styles in DIRECTORY")
    parser.add_argument("--versions", type=int, help="versions of each style of the library (with --count; 1)")
    arguments = parser.parse_args()
    if arguments.versions is not None and arguments.count is None:
        parser.error("--versions needs --count")
    arguments.versions = arguments.versions or 1
    if arguments.count is None:
        for written in write_demo_loras(arguments.directory, arguments.profile):
            print(f"wrote {written}")
    else:
        ids = make_library(arguments.directory, arguments.count, arguments.versions, arguments.profile)
        print(f"wrote {len(ids)} styles × {arguments.versions} versions in {arguments.directory}: "
              f"{ids[0]} … {ids[-1]}")
