"""A style's manifest (``style.yaml``): the patterns of ids, versions and file names, the pydantic schema, and
its parsing from bytes within the bounded-YAML limits."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from serve_app.styles.bounded_yaml import load_mapping

_STYLE_ID = r"[a-z0-9][a-z0-9-]{0,62}"
_VERSION_DIGITS = 9
_VERSION = rf"[1-9][0-9]{{0,{_VERSION_DIGITS - 1}}}"  # no leading zero: one spelling per version
# The one definition of a style name, for pydantic, FastAPI and re.fullmatch alike (ASCII classes only, so no
# look-alike letters or digits; anchored with ^$, which pydantic's regex and fullmatch both take as the whole text).
STYLE_ID_PATTERN = rf"^{_STYLE_ID}$"
VERSION_PATTERN = rf"^{_VERSION}$"
STYLE_REF_PATTERN = rf"^{_STYLE_ID}(?:@{_VERSION})?$"
MAX_VERSION = 10**_VERSION_DIGITS - 1
FILE_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
MAX_MANIFEST_BYTES = 64 * 1024  # a real manifest is 1-2 KiB
MANIFEST_FILE = "style.yaml"
LORA_FILE = "lora.safetensors"
PREVIEW_FILE = "preview"  # + the suffix of its format
PREVIEW_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Pillow's format name -> stored suffix; MPO is a JPEG with more pictures after the first (phones' depth maps).
PREVIEW_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp"}
MAX_PREVIEW_BYTES = 2 * 1024 * 1024
MAX_PREVIEW_PIXELS = 2048 * 2048
# A derived group prior's horizontal radius is at most this share of the width per person: its grown, feathered mask
# (MASK_GROWTH 1.25) then just reaches its neighbour's.
GROUP_SPACING = 0.4
# RFC 3339's date-time (offset required), which the OpenAPI "date-time" documents.
RFC3339_DATE_TIME = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"


def _date_time_text(value: object) -> object:
    """Pydantic alone would also read a number or a string of digits as a Unix time (``0`` as 1970-01-01). A
    datetime passes: YAML reads an unquoted timestamp as one."""
    if isinstance(value, datetime) or (isinstance(value, str) and re.fullmatch(RFC3339_DATE_TIME, value)):
        return value
    raise PydanticCustomError(
        "date_time_format", "Input should be an RFC 3339 date-time with a timezone, such as 2026-12-24T00:00:00Z"
    )


# A timezone-aware date-time from a client: an RFC 3339 string or a YAML timestamp, never a number.
StrictAwareDatetime = Annotated[AwareDatetime, BeforeValidator(_date_time_text)]


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
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="the LoRA file's SHA-256; recorded by the store on publish"
    )

    @field_validator("file")
    @classmethod
    def _safetensors_in_folder(cls, value: str) -> str:
        if not value.endswith(".safetensors") or not re.fullmatch(FILE_NAME_PATTERN, value):
            raise ValueError(f"LoRA file must be a plain '.safetensors' file name, got {value!r}")
        return value


class StyleManifest(BaseModel):
    """What ``style.yaml`` holds."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STYLE_ID_PATTERN, description="style id, lowercase letters, digits and dashes")
    version: int = Field(1, ge=1, le=MAX_VERSION, description="immutable version of this style")
    title: str = Field(min_length=1, max_length=120)
    description: str = Field("", max_length=2000)
    prompt_template: str = Field(min_length=1, max_length=1000, description="prompt with a {subject} placeholder")
    negative_prompt: str = Field("", max_length=1000)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    defaults: GenerationDefaults = Field(default_factory=GenerationDefaults)
    prior_face_mask: PriorFaceMask = Field(default_factory=PriorFaceMask)
    group_face_masks: dict[Literal[2, 3, 4], list[PriorFaceMask]] = Field(
        default_factory=dict,
        description="for a group portrait of 2, 3 or 4 people: that many prior ellipses, left to right; a count not "
        "given spreads prior_face_mask's ellipse along a row",
    )
    tags: list[str] = Field(default_factory=list)
    available_from: StrictAwareDatetime | None = Field(None, description="live from (timezone-aware); none: always")
    available_until: StrictAwareDatetime | None = Field(None, description="live until (timezone-aware); none: always")
    preview: str | None = Field(
        None, pattern=FILE_NAME_PATTERN, description="optional preview image (PNG, JPEG or WebP) in the style folder"
    )

    @model_validator(mode="after")
    def _window_in_order(self) -> StyleManifest:
        if self.available_from and self.available_until and self.available_until <= self.available_from:
            raise ValueError("available_until must be after available_from")
        return self

    @field_validator("group_face_masks")
    @classmethod
    def _one_mask_per_person(cls, value: dict[int, list[PriorFaceMask]]) -> dict[int, list[PriorFaceMask]]:
        for people, masks in value.items():
            if len(masks) != people:
                raise ValueError(f"group_face_masks[{people}] needs {people} ellipses, got {len(masks)}")
            if [mask.center_x for mask in masks] != sorted(mask.center_x for mask in masks):
                raise ValueError(f"group_face_masks[{people}] must run left to right (increasing center_x)")
        return value

    @field_validator("preview")
    @classmethod
    def _image_file(cls, value: str | None) -> str | None:
        if value is not None and Path(value).suffix.lower() not in PREVIEW_MEDIA_TYPES:
            raise ValueError(f"a preview is a .png, .jpg, .jpeg or .webp file, got {value!r}")
        return value

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

    def face_masks(self, people: int) -> list[PriorFaceMask]:
        """The prior ellipses of a portrait of ``people`` people, left to right: the style's own, else its single
        ellipse spread evenly along a row, shrunk to fit (at most the row's share of the width)."""
        if people == 1:
            return [self.prior_face_mask]
        if people in self.group_face_masks:
            return self.group_face_masks[people]
        single = self.prior_face_mask
        shrink = min(1.0, GROUP_SPACING / people / single.radius_x)
        return [
            PriorFaceMask(
                center_x=(index + 0.5) / people,
                center_y=single.center_y,
                radius_x=single.radius_x * shrink,
                radius_y=single.radius_y * shrink,
            )
            for index in range(people)
        ]


class StyleFolderError(ValueError):
    """A style folder that cannot be used, with the reason."""


def parse_manifest(data: bytes, source: str) -> StyleManifest:
    """A manifest from its bytes; anything wrong with them is a StyleFolderError naming the problem."""
    try:
        return StyleManifest.model_validate(load_mapping(data, MAX_MANIFEST_BYTES))
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: also a bad date or an over-long integer in the YAML
        raise StyleFolderError(f"{source}: {exc}") from exc
