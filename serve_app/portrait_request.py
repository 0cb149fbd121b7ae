"""The pipeline's request from what a client asked (``PortraitOptions``) and the style it names: every default of
the style's manifest resolved, and one seed per candidate."""

from __future__ import annotations

import secrets

from serve_app.pipeline.request import FacePrior, PortraitRequest, StyleLora
from serve_app.schemas import PortraitOptions
from serve_app.styles.manifest import StyleManifest


def resolve_seed(options: PortraitOptions) -> int:
    """The request's seed, or a random one leaving room for its candidates' seeds (seed + i)."""
    return secrets.randbelow(2**31 - options.num_candidates) if options.seed is None else options.seed


def portrait_request(
    options: PortraitOptions, manifest: StyleManifest, seed: int, people: int = 1
) -> PortraitRequest:
    """``people``: how many reference images the request sent (one per person)."""
    defaults = manifest.defaults
    return PortraitRequest(
        prompt=manifest.prompt(options.subject),
        negative_prompt=manifest.negative_prompt,
        lora=StyleLora(key=manifest.versioned_id, scale=manifest.lora.scale),
        seeds=tuple(seed + i for i in range(options.num_candidates)),
        top_k=options.top_k,
        size=options.size or defaults.size,
        steps=options.steps or defaults.steps,
        guidance_scale=defaults.guidance_scale,
        identity_weight=defaults.identity_weight if options.identity_weight is None else options.identity_weight,
        t1=defaults.t1 if options.t1 is None else options.t1,
        upscale=options.upscale,
        face_priors=tuple(
            FacePrior(center=(prior.center_x, prior.center_y), radii=(prior.radius_x, prior.radius_y))
            for prior in manifest.face_masks(people)
        ),
    )
