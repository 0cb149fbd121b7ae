"""A catalogue style through the in-process pipeline: what the CLI, the benchmarks and the tests run."""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.pipeline.portrait import PortraitPipeline, PortraitRun
from serve_app.portrait_request import portrait_request, resolve_seed
from serve_app.schemas import PortraitOptions
from serve_app.styles.folder import Style


def generate(
    pipeline: PortraitPipeline, images: Sequence[bytes], style: Style, options: PortraitOptions
) -> PortraitRun:
    """The portraits of ``options`` in ``style`` of the people in ``images`` (one each, left to right); the seed
    is random when the options give none."""
    request = portrait_request(options, style.manifest, resolve_seed(options), len(images))
    return pipeline.generate(images, request, style.read_lora)
