"""Style catalogue: the pydantic manifest of a style folder and the read-only catalogue of shipped styles.

A style folder ``styles/<id>/`` holds ``style.yaml`` (a :class:`StyleManifest`) and the LoRA it names
(``lora.safetensors``). The versioned id ``<id>@<version>`` is what names a LoRA adapter once loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.pipeline.errors import UnknownStyleError

STYLE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MANIFEST_FILE = "style.yaml"


class PriorFaceMask(BaseModel):
    """Ellipse, in fractions of the image size, where the style expects the face when none is found."""

    model_config = ConfigDict(extra="forbid")

    center_x: float = Field(0.5, ge=0.0, le=1.0, description="ellipse centre, fraction of the width")
    center_y: float = Field(0.42, ge=0.0, le=1.0, description="ellipse centre, fraction of the height")
    radius_x: float = Field(0.2, gt=0.0, le=0.5, description="horizontal radius, fraction of the width")
    radius_y: float = Field(0.26, gt=0.0, le=0.5, description="vertical radius, fraction of the height")


class GenerationDefaults(BaseModel):
    """Per-style sampling defaults; a request may override each."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(12, ge=2, le=150, description="denoising steps in total (layout + blend)")
    guidance_scale: float = Field(7.5, ge=1.0, le=30.0, description="classifier-free guidance scale")
    identity_weight: float = Field(
        0.8, ge=0.0, le=1.0, description="λ: weight of the identity branch inside the face mask"
    )
    t1: float = Field(
        0.35, gt=0.0, lt=1.0, description="fraction of the steps the layout stage runs prompt-only before blending"
    )
    size: int = Field(128, ge=64, le=2048, multiple_of=8, description="generated image side, pixels")


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field("lora.safetensors", description="LoRA file name inside the style folder")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="adapter weight")

    @field_validator("file")
    @classmethod
    def _safetensors_in_folder(cls, value: str) -> str:
        if not value.endswith(".safetensors") or "/" in value or "\\" in value or value.startswith("."):
            raise ValueError(f"LoRA file must be a plain '.safetensors' file name, got {value!r}")
        return value


class StyleManifest(BaseModel):
    """What ``style.yaml`` holds."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STYLE_ID_PATTERN, description="style id, lowercase letters, digits and dashes")
    version: int = Field(1, ge=1, description="immutable version of this style")
    title: str = Field(min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    prompt_template: str = Field(min_length=1, max_length=1000, description="prompt with a {subject} placeholder")
    negative_prompt: str = Field("", max_length=1000)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    prior_face_mask: PriorFaceMask = Field(default_factory=PriorFaceMask)
    tags: list[str] = Field(default_factory=list)

    @field_validator("prompt_template")
    @classmethod
    def _has_subject(cls, value: str) -> str:
        if "{subject}" not in value:
            raise ValueError("prompt_template must contain the {subject} placeholder")
        if re.search(r"\{(?!subject\})", value):
            raise ValueError("prompt_template may hold no placeholder but {subject}")
        return value

    @property
    def versioned_id(self) -> str:
        return f"{self.id}@{self.version}"

    def prompt(self, subject: str) -> str:
        return self.prompt_template.replace("{subject}", subject)


@dataclass(frozen=True)
class Style:
    """A manifest with the location of its LoRA file."""

    manifest: StyleManifest
    lora_path: Path

    @property
    def versioned_id(self) -> str:
        return self.manifest.versioned_id


class StyleFolderError(ValueError):
    """A style folder that cannot be used, with the reason."""


def load_style_folder(folder: Path, require_lora: bool = True) -> Style:
    """Read and validate one style folder."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise StyleFolderError(f"{folder}: no {MANIFEST_FILE}")
    try:
        manifest = StyleManifest.model_validate(yaml.safe_load(manifest_path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValidationError) as exc:
        raise StyleFolderError(f"{manifest_path}: {exc}") from exc
    if manifest.id != folder.name:
        raise StyleFolderError(f"{manifest_path}: id {manifest.id!r} differs from the folder name {folder.name!r}")
    lora_path = folder / manifest.lora.file
    if require_lora and not lora_path.is_file():
        raise StyleFolderError(f"{folder}: LoRA file {manifest.lora.file!r} is missing")
    return Style(manifest=manifest, lora_path=lora_path)


class StyleCatalog:
    """The styles found in one directory, keyed by id."""

    def __init__(self, directory: Path, require_lora: bool = True) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise StyleFolderError(f"styles directory {self.directory} does not exist")
        folders = sorted(p for p in self.directory.iterdir() if (p / MANIFEST_FILE).is_file())
        styles = (load_style_folder(folder, require_lora) for folder in folders)
        self._styles = {style.manifest.id: style for style in styles}

    def ids(self) -> list[str]:
        return sorted(self._styles)

    def list(self) -> list[Style]:
        return [self._styles[i] for i in self.ids()]

    def get(self, style: str) -> Style:
        """A style by id, or by versioned id ``id@version``."""
        style_id, _, version = style.partition("@")
        found = self._styles.get(style_id)
        if found is None or (version and version != str(found.manifest.version)):
            raise UnknownStyleError(f"unknown style {style!r}; available: {', '.join(self.ids()) or 'none'}")
        return found
