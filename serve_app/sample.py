"""The bundled sample face: what the CLI uses without ``--image``, the studio offers to try, and curators'
previews are generated from."""

from __future__ import annotations

from importlib import resources


def sample_face() -> bytes:
    """The bundled sample face (cropped from scikit-image's public-domain astronaut photo)."""
    return resources.files("serve_app").joinpath("assets/sample_face.png").read_bytes()
