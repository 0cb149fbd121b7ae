"""How often a candidate comes out usable, on the tiny profile: the share of candidates the fusion ranker accepts
(a face found again where it was fused, frontal, one only) and their mean identity score, over a fixed range of
seeds (N=4 per request, K=N). The tiny diffusion models are random, so this measures the face path — enhancement,
alignment, placement, fusion, detection — not image quality. Deterministic for a given code and model version:
compare a change against its base by running this in both checkouts.

    python bench/acceptance.py                  # seeds 0–119, xmas-sweater
    python bench/acceptance.py --requests 10 --style film-noir

Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics

from serving import REPO

from serve_app.in_process import generate
from serve_app.pipeline.models import load_models
from serve_app.pipeline.portrait import PortraitPipeline
from serve_app.schemas import PortraitOptions
from serve_app.styles.catalog import StyleCatalog

CANDIDATES = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--style", default="xmas-sweater")
    parser.add_argument("--requests", type=int, default=30, help="requests of N=4 candidates, seeds 0, 4, 8, …")
    args = parser.parse_args()

    pipeline = PortraitPipeline(load_models())
    style = StyleCatalog(REPO / "styles").get(args.style)
    image = (REPO / "serve_app" / "assets" / "sample_face.png").read_bytes()
    portraits = []
    for request in range(args.requests):
        options = PortraitOptions(
            style=args.style, seed=request * CANDIDATES, num_candidates=CANDIDATES, top_k=CANDIDATES
        )
        portraits += generate(pipeline, [image], style, options).portraits
    accepted = [p for p in portraits if p.accepted]
    reasons = sorted({p.rejected for p in portraits if not p.accepted})
    print(
        json.dumps(
            {
                "style": args.style,
                "candidates": len(portraits),
                "accepted": len(accepted),
                "accepted_share": round(len(accepted) / len(portraits), 3),
                "mean_identity_score": round(statistics.fmean(p.identity_score for p in accepted), 3)
                if accepted
                else None,
                "rejected": {reason: sum(p.rejected == reason for p in portraits) for reason in reasons},
            }
        )
    )


if __name__ == "__main__":
    main()
