from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from serve_app.pipeline.models import Models, load_models

REPO = Path(__file__).resolve().parents[1]
INSIGHTFACE_IMAGES = Path(resources.files("insightface")) / "data" / "images"


def png_bytes(image: np.ndarray | Image.Image, **save_options) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG", **save_options)
    return buffer.getvalue()


def packaged_image(name: str) -> np.ndarray:
    """A real photo shipped inside the insightface package (Tom Hanks' 112² aligned face; t1.jpg, a group)."""
    return np.asarray(Image.open(INSIGHTFACE_IMAGES / name).convert("RGB"))


@pytest.fixture(scope="session")
def models() -> Models:
    return load_models("tiny")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def astronaut_png(astronaut: np.ndarray) -> bytes:
    return png_bytes(astronaut)


@pytest.fixture(scope="session")
def styles_dir() -> Path:
    return REPO / "styles"
