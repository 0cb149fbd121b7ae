"""Command line: ``python -m serve_app generate …`` runs the five stages in process; ``styles`` lists, validates
and publishes styles; ``weights`` fetches and verifies the production or commercial weights."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from pydantic import ValidationError

from serve_app.api.dependencies import ADMIN_TOKEN_ENV
from serve_app.in_process import generate
from serve_app.pipeline.errors import PortraitError
from serve_app.pipeline.images import encode_png
from serve_app.pipeline.lora_validation import validate_lora
from serve_app.pipeline.models import load_models
from serve_app.pipeline.models.profiles import weights_folder
from serve_app.pipeline.models.weights import (
    WeightsError,
    WeightsManifest,
    check_files,
    check_profile_weights,
    default_manifest,
    fetch,
    load_manifest,
    require_cleared,
)
from serve_app.pipeline.models.weights_folder import verify_loadable
from serve_app.pipeline.settings import PROFILES, WEIGHTS_PROFILES, ModelSettings
from serve_app.pipeline.portrait import PortraitPipeline, PortraitRun
from serve_app.sample import sample_face
from serve_app.schemas import PortraitImage, PortraitOptions, PortraitSummary
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.folder import Style, load_style_folder
from serve_app.styles.manifest import MANIFEST_FILE

DEFAULT_STYLES_DIR = Path("styles")
MANIFEST_HELP = "default: configs/weights.yaml, or configs/weights-commercial.yaml for the commercial profiles"


def summarize(run: PortraitRun, style: Style) -> PortraitSummary:
    return PortraitSummary(
        style=style.versioned_id,
        seed=run.request.seeds[0],
        images=[PortraitImage.of(portrait) for portrait in run.portraits],
        mask_sources=list(run.layout.mask_sources),
        timings=run.timings,
    )


def write_run(run: PortraitRun, style: Style, out: Path) -> PortraitSummary:
    out.mkdir(parents=True, exist_ok=True)
    for index, portrait in enumerate(run.portraits, start=1):
        (out / f"portrait_{index}.png").write_bytes(encode_png(portrait.image))
    for seed, masks in zip(run.plan.seeds, run.layout.masks):
        people = masks.float().cpu().numpy()
        named = {"": people.max(0)} | ({} if len(people) == 1 else {f"_person{i + 1}": m for i, m in enumerate(people)})
        for suffix, mask in named.items():
            image = Image.fromarray((mask * 255).round().astype(np.uint8))
            side = (run.plan.size, run.plan.size)
            image.resize(side, Image.Resampling.BILINEAR).save(out / f"layout_mask_{seed}{suffix}.png")
    summary = summarize(run, style)
    (out / "result.json").write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return summary


def command_generate(args: argparse.Namespace) -> int:
    catalog = StyleCatalog(args.styles_dir)
    options = PortraitOptions(
        style=args.style,
        num_candidates=args.num_candidates,
        top_k=args.top_k,
        seed=args.seed,
        upscale=args.upscale,
        subject=args.subject,
        size=args.size,
        steps=args.steps,
        identity_weight=args.identity_weight,
    )
    images = [path.read_bytes() for path in args.image] if args.image else [sample_face()]
    pipeline = PortraitPipeline(load_models(model_settings(args)))
    style = catalog.get(options.style)
    summary = write_run(generate(pipeline, images, style, options), style, args.out)
    print(summary.model_dump_json(indent=2))
    return 0


def command_styles(args: argparse.Namespace) -> int:
    for style in StyleCatalog(args.styles_dir).list():
        manifest = style.manifest
        print(f"{manifest.versioned_id:24} {manifest.title}  (size {manifest.defaults.size}, {manifest.defaults.steps} steps)")
    return 0


def command_validate(args: argparse.Namespace) -> int:
    """Offline: the manifest, and the LoRA checked and dry-run loaded on the profile's base model."""
    style = load_style_folder(args.folder)
    summary = validate_lora(load_models(model_settings(args)).diffusion, style.read_lora())
    print(f"{args.folder}: valid style {style.manifest.id!r} (LoRA rank {summary.rank}, {summary.tensors} tensors)")
    return 0


def weights_manifest(args: argparse.Namespace) -> WeightsManifest:
    """The manifest of ``--profile`` (or ``--manifest``), refused when a commercial profile's is not all cleared."""
    manifest = load_manifest(args.manifest or default_manifest(args.profile))
    require_cleared(manifest, args.profile)
    return manifest


def command_weights_fetch(args: argparse.Namespace) -> int:
    """Every file checked (and fetched where missing or corrupt) by ``fetch`` itself, then every model loaded once."""
    manifest = weights_manifest(args)
    stored = fetch(args.dir, manifest)
    print(f"{args.dir}: stored {len(stored)} file(s){': ' + ', '.join(stored) if stored else ' (all present and intact)'}")
    return report_weights(args, manifest, [])


def command_weights_verify(args: argparse.Namespace) -> int:
    """Offline: every file present with its recorded sha256, then every model loaded once."""
    manifest = weights_manifest(args)
    return report_weights(args, manifest, check_files(args.dir, manifest))


def report_weights(args: argparse.Namespace, manifest: WeightsManifest, problems: list[str]) -> int:
    if not problems and not args.skip_loading:
        problems = verify_loadable(weights_folder(args.profile, args.dir, manifest))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.dir}: {sum(1 for _ in manifest.entries())} files intact, {len(manifest.models)} models usable")
    return 1 if problems else 0


def model_settings(args: argparse.Namespace) -> ModelSettings:
    settings = ModelSettings(profile=args.profile, weights_dir=args.weights_dir, weights_manifest=args.manifest)
    check_profile_weights(settings)
    return settings


def command_publish(args: argparse.Namespace) -> int:
    style = load_style_folder(args.folder)
    if not args.token:
        raise ValueError(f"give --token or set {ADMIN_TOKEN_ENV}")
    files = {
        "manifest": (MANIFEST_FILE, (args.folder / MANIFEST_FILE).read_bytes()),
        "lora": (style.manifest.lora.file, style.read_lora()),
    }
    response = httpx.post(
        f"{args.url.rstrip('/')}/admin/styles", files=files, headers={"Authorization": f"Bearer {args.token}"},
        timeout=300,
    )
    print(json.dumps(response.json(), indent=2), file=sys.stdout if response.status_code == 201 else sys.stderr)
    return 0 if response.status_code == 201 else 2


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
    root.add_argument("--styles-dir", type=Path, default=DEFAULT_STYLES_DIR, help="style folders (default: styles)")
    commands = root.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="generate portraits in process")
    generate.add_argument(
        "--image", type=Path, action="append", help="reference face image (default: the bundled sample face); "
        "repeat it for a group portrait, one per person, left to right"
    )
    generate.add_argument("--style", required=True, help="style id")
    generate.add_argument("--out", type=Path, required=True, help="output directory")
    generate.add_argument("--num-candidates", type=int, default=4, help="N candidates (default 4)")
    generate.add_argument("--top-k", type=int, default=2, help="K portraits kept (default 2)")
    generate.add_argument("--seed", type=int, help="seed (default: random)")
    generate.add_argument("--upscale", type=int, default=2, choices=(1, 2, 4), help="super-resolution (default 2)")
    generate.add_argument("--size", type=int, help="generated side before upscaling (default: the style's)")
    generate.add_argument("--steps", type=int, help="denoising steps (default: the style's)")
    generate.add_argument("--identity-weight", type=float, help="λ (default: the style's)")
    generate.add_argument("--subject", default="a person", help="fills {subject} in the style prompt")
    add_profile_arguments(generate)
    generate.set_defaults(handler=command_generate)

    styles = commands.add_parser("styles", help="list styles (live now); validate or publish a style folder")
    styles.set_defaults(handler=command_styles)
    curation = styles.add_subparsers(dest="action")
    validate = curation.add_parser("validate", help="check a style folder offline (manifest + LoRA dry-run load)")
    validate.add_argument("folder", type=Path)
    add_profile_arguments(validate)
    validate.set_defaults(handler=command_validate)
    publish = curation.add_parser("publish", help="publish a style folder to a running service")
    publish.add_argument("folder", type=Path)
    publish.add_argument("--url", default="http://127.0.0.1:8000", help="service URL (default: local)")
    publish.add_argument("--token", default=os.environ.get(ADMIN_TOKEN_ENV), help=f"admin token (default: ${ADMIN_TOKEN_ENV})")
    publish.set_defaults(handler=command_publish)

    weights = commands.add_parser("weights", help="a weights folder: fetch from the Hugging Face Hub, verify")
    actions = weights.add_subparsers(dest="action", required=True)
    fetch_command = actions.add_parser("fetch", help="download what is missing or corrupt (needs network), then verify")
    verify_command = actions.add_parser("verify", help="offline: presence, sha256 and loadability of every model")
    for command, handler in ((fetch_command, command_weights_fetch), (verify_command, command_weights_verify)):
        command.add_argument("--dir", type=Path, required=True, help="the weights folder")
        command.add_argument("--profile", default="production", choices=WEIGHTS_PROFILES, help="default production")
        command.add_argument("--manifest", type=Path, help=MANIFEST_HELP)
        command.add_argument("--skip-loading", action="store_true", help="check files and hashes only")
        command.set_defaults(handler=handler)
    return root


def add_profile_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--profile", default="tiny", choices=PROFILES, help="model profile (default tiny)")
    command.add_argument("--weights-dir", type=Path, help="weights folder (profiles production and commercial)")
    command.add_argument("--manifest", type=Path, help=MANIFEST_HELP)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except PortraitError as error:
        print(json.dumps(error.to_dict()), file=sys.stderr)
        return 2
    except (ValidationError, ValueError, httpx.HTTPError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
