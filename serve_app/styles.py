"""Style catalogue: the pydantic manifest of a style folder and the versioned style library.

A style folder holds ``style.yaml`` (a :class:`StyleManifest`) and the LoRA it names (``lora.safetensors``).
Versions are immutable; ``<id>@<version>`` names a version everywhere (it is the multiplexed model id).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serve_app.pipeline.errors import InvalidStyleError, StyleNotAvailableError, UnknownStyleError

STYLE_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
MANIFEST_FILE = "style.yaml"
LORA_FILE = "lora.safetensors"
STATE_FILE = "state.json"


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
    available_from: AwareDatetime | None = Field(None, description="live from (timezone-aware); none: always")
    available_until: AwareDatetime | None = Field(None, description="live until (timezone-aware); none: always")
    preview: str | None = Field(None, description="optional preview image file name inside the style folder")

    @model_validator(mode="after")
    def _window_in_order(self) -> StyleManifest:
        if self.available_from and self.available_until and self.available_until <= self.available_from:
            raise ValueError("available_until must be after available_from")
        return self

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
    """One version of a style: its manifest and the location of its LoRA file."""

    manifest: StyleManifest
    lora_path: Path

    @property
    def versioned_id(self) -> str:
        return self.manifest.versioned_id


class StyleFolderError(ValueError):
    """A style folder that cannot be used, with the reason."""


def parse_manifest(text: str, source: str) -> StyleManifest:
    try:
        return StyleManifest.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise StyleFolderError(f"{source}: {exc}") from exc


def load_style_folder(folder: Path, require_lora: bool = True) -> Style:
    """Read and validate one style folder (``style.yaml`` and the LoRA it names)."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise StyleFolderError(f"{folder}: no {MANIFEST_FILE}")
    manifest = parse_manifest(manifest_path.read_text(encoding="utf-8"), str(manifest_path))
    lora_path = folder / manifest.lora.file
    if require_lora and not lora_path.is_file():
        raise StyleFolderError(f"{folder}: LoRA file {manifest.lora.file!r} is missing")
    return Style(manifest=manifest, lora_path=lora_path)


class StyleState(BaseModel):
    """A style's mutable state (``<id>/state.json``): overrides a curator set after publishing."""

    model_config = ConfigDict(extra="forbid")

    default_version: int | None = None
    available_from: AwareDatetime | None = None
    available_until: AwareDatetime | None = None
    retired: bool = False


class StyleStatus(BaseModel):
    """What the admin listing shows of one style."""

    id: str
    status: str = Field(description="scheduled, live, expired or retired")
    default_version: int
    versions: list[int]
    available_from: AwareDatetime | None
    available_until: AwareDatetime | None
    title: str


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class StyleCatalog:
    """The versioned style library in one directory; every read goes to disk, so all replicas and restarts
    see the same library.

    Layout: ``<root>/<id>/style.yaml`` (+ LoRA) is a shipped folder holding the version its manifest names;
    ``<root>/<id>/<n>/`` holds published version n; ``<root>/<id>/state.json`` the curator's overrides.
    Versions are immutable: publishing writes a hidden temporary folder, then renames it to the next free number
    (a rename onto an existing, non-empty version folder fails, so concurrent publishers each get their own).
    """

    def __init__(self, directory: Path, require_lora: bool = True, clock: Clock = utc_now) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise StyleFolderError(f"styles directory {self.directory} does not exist")
        self.require_lora = require_lora
        self.clock = clock
        for style_id in self.ids():  # a broken library fails at start-up, not on the first request
            self.versions(style_id)

    # -- reading -------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and re.match(STYLE_ID_PATTERN, p.name))

    def versions(self, style_id: str) -> dict[int, Style]:
        folder = self.directory / style_id
        if not folder.is_dir():
            return {}
        found = {}
        candidates = [folder] + [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
        for version_folder in candidates:
            if (version_folder / MANIFEST_FILE).is_file():
                style = load_style_folder(version_folder, self.require_lora)
                if style.manifest.id != style_id:
                    raise StyleFolderError(f"{version_folder}: id {style.manifest.id!r} differs from {style_id!r}")
                found[style.manifest.version] = style
        return dict(sorted(found.items()))

    def state(self, style_id: str) -> StyleState:
        path = self.directory / style_id / STATE_FILE
        if not path.is_file():
            return StyleState()
        return StyleState.model_validate_json(path.read_text(encoding="utf-8"))

    def version(self, versioned_id: str) -> Style:
        """Any stored version by ``id@version``, whatever its status (replicas load LoRAs with this)."""
        style_id, _, version = versioned_id.partition("@")
        found = self.versions(style_id).get(int(version)) if version.isdigit() else None
        if found is None:
            raise UnknownStyleError(f"unknown style version {versioned_id!r}")
        return found

    def status(self, style_id: str) -> StyleStatus:
        versions = self.versions(style_id)
        if not versions:
            raise UnknownStyleError(f"unknown style {style_id!r}; available: {', '.join(self.live_ids()) or 'none'}")
        state = self.state(style_id)
        default = state.default_version if state.default_version in versions else max(versions)
        manifest = versions[default].manifest
        start = state.available_from or manifest.available_from
        end = state.available_until or manifest.available_until
        now = self.clock()
        if state.retired:
            status = "retired"
        elif start is not None and now < start:
            status = "scheduled"
        elif end is not None and now >= end:
            status = "expired"
        else:
            status = "live"
        return StyleStatus(
            id=style_id, status=status, default_version=default, versions=list(versions),
            available_from=start, available_until=end, title=manifest.title,
        )

    def live_ids(self) -> list[str]:
        return [i for i in self.ids() if self.versions(i) and self.status(i).status == "live"]

    def list(self) -> list[Style]:
        """The default version of every style live now."""
        return [self.versions(i)[self.status(i).default_version] for i in self.live_ids()]

    def get(self, style: str) -> Style:
        """The style a request names, ``id`` (its default version) or ``id@version``, if usable now."""
        style_id, _, version = style.partition("@")
        status = self.status(style_id)
        if status.status != "live":
            raise StyleNotAvailableError(f"style {style_id!r} is {status.status}", status.status)
        if not version:
            return self.versions(style_id)[status.default_version]
        return self.version(style)

    # -- writing -------------------------------------------------------------------------------------------
    def publish(self, manifest: StyleManifest, lora: bytes) -> Style:
        """Store a new version of ``manifest.id`` (its ``version`` is replaced by the next free number)."""
        folder = self.directory / manifest.id
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".publishing-", dir=folder))
        try:
            (staging / LORA_FILE).write_bytes(lora)
            lora_spec = manifest.lora.model_copy(update={"file": LORA_FILE, "sha256": hashlib.sha256(lora).hexdigest()})
            while True:
                version = max(self.versions(manifest.id), default=0) + 1
                stored = manifest.model_copy(update={"version": version, "lora": lora_spec})
                text = yaml.safe_dump(stored.model_dump(mode="json", exclude_none=True), sort_keys=False)
                (staging / MANIFEST_FILE).write_text(text, encoding="utf-8")
                try:
                    os.rename(staging, folder / str(version))
                    return Style(stored, folder / str(version) / LORA_FILE)
                except OSError as error:
                    if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def update_state(self, style_id: str, **changes) -> StyleState:
        """Change a style's overrides (schedule window, default version, retired) atomically."""
        versions = self.versions(style_id)
        if not versions:
            raise UnknownStyleError(f"unknown style {style_id!r}")
        state = self.state(style_id).model_copy(update=changes)
        state = StyleState.model_validate(state.model_dump())
        if state.default_version is not None and state.default_version not in versions:
            raise InvalidStyleError(f"style {style_id!r} has no version {state.default_version}")
        if state.available_from and state.available_until and state.available_until <= state.available_from:
            raise InvalidStyleError("available_until must be after available_from")
        path = self.directory / style_id / STATE_FILE
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".state-", delete=False) as temporary:
            temporary.write(state.model_dump_json(indent=2))
        os.replace(temporary.name, path)
        return state
