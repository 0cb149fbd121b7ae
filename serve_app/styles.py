"""Style catalogue: the pydantic manifest of a style folder and the versioned style library.

A style folder holds ``style.yaml`` (a :class:`StyleManifest`) and the LoRA it names (``lora.safetensors``).
Versions are immutable; ``<id>@<version>`` names a version everywhere (it is the multiplexed model id).
"""

from __future__ import annotations

import hashlib
import io
import re
import reprlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import yaml
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.pipeline.errors import InvalidStyleError, NoPreviewError, StyleNotAvailableError, UnknownStyleError

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
MAX_YAML_DEPTH = 20  # a real manifest nests 2 deep
MAX_YAML_NODES = 10_000  # with every alias expanded; a real manifest has about 40
# libyaml's parser when PyYAML has it: the pure-Python scanner costs about 0.1 ms a node, so a manifest at the node
# limit would hold the ingress's GIL for a second or more.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MANIFEST_FILE = "style.yaml"
LORA_FILE = "lora.safetensors"
PREVIEW_FILE = "preview"  # + the suffix of its format
PREVIEW_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Pillow's format name -> stored suffix; MPO is a JPEG with more pictures after the first (phones' depth maps).
PREVIEW_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp"}
MAX_PREVIEW_BYTES = 2 * 1024 * 1024
MAX_PREVIEW_PIXELS = 2048 * 2048
STATE_FILE = "state.json"
CLAIM_FILE = ".claim"


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
    tags: list[str] = Field(default_factory=list)
    available_from: AwareDatetime | None = Field(None, description="live from (timezone-aware); none: always")
    available_until: AwareDatetime | None = Field(None, description="live until (timezone-aware); none: always")
    preview: str | None = Field(
        None, pattern=FILE_NAME_PATTERN, description="optional preview image (PNG, JPEG or WebP) in the style folder"
    )

    @model_validator(mode="after")
    def _window_in_order(self) -> StyleManifest:
        if self.available_from and self.available_until and self.available_until <= self.available_from:
            raise ValueError("available_until must be after available_from")
        return self

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


@dataclass(frozen=True)
class Style:
    """One version of a style: its manifest and where its LoRA file is (on ``fs``, local or remote)."""

    manifest: StyleManifest
    fs: AbstractFileSystem
    lora_url: str

    @property
    def versioned_id(self) -> str:
        return self.manifest.versioned_id

    def read_lora(self) -> bytes:
        return self.fs.cat_file(self.lora_url)

    def read_preview(self) -> tuple[bytes, str]:
        """The preview image and its media type."""
        name = self.manifest.preview
        if name is None:
            raise NoPreviewError(f"style {self.versioned_id} has no preview image")
        folder = self.lora_url.rsplit("/", 1)[0]
        return self.fs.cat_file(f"{folder}/{name}"), PREVIEW_MEDIA_TYPES[Path(name).suffix.lower()]


class StyleFolderError(ValueError):
    """A style folder that cannot be used, with the reason."""


def _check_events(text: str) -> None:
    """Nesting depth, node count and tags from the event stream, before anything is composed (PyYAML's composer
    recurses once per level). Tags are refused: a manifest needs none, and PyYAML's constructors fail with
    arbitrary exceptions on a malformed explicitly tagged scalar (``!!bool x``, ``!!timestamp x``)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=SAFE_LOADER):
        if isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
            continue
        if not isinstance(event, yaml.NodeEvent) or isinstance(event, yaml.AliasEvent):
            continue
        if event.tag is not None:
            raise ValueError(f"YAML tags such as {event.tag!r} are not allowed")
        nodes += 1
        depth += isinstance(event, yaml.CollectionStartEvent)
        if depth > MAX_YAML_DEPTH:
            raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels")
        if nodes > MAX_YAML_NODES:
            raise ValueError(f"more than {MAX_YAML_NODES} YAML nodes")


def _expanded(node: yaml.Node, done: dict[int, tuple[int, int]], open_nodes: set[int]) -> tuple[int, int]:
    """(node count, depth) of ``node`` with every alias expanded, memoised per node so that a "billion laughs"
    costs its size in the document, not its expansion. Aliases only point back in the document, so this recursion
    stays as shallow as the document's own nesting; a node met again while still open contains itself."""
    if id(node) in done:
        return done[id(node)]
    if id(node) in open_nodes:
        raise ValueError("a YAML alias refers to a node that contains it (recursive alias)")
    open_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else []
    counts = [_expanded(child, done, open_nodes) for child in children]
    size = 1 + sum(count for count, _ in counts)
    depth = isinstance(node, yaml.CollectionNode) + max((deep for _, deep in counts), default=0)
    if size > MAX_YAML_NODES:
        raise ValueError(f"expands to more than {MAX_YAML_NODES} YAML nodes (aliases counted where they are used)")
    if depth > MAX_YAML_DEPTH:
        raise ValueError(f"nested deeper than {MAX_YAML_DEPTH} levels once aliases are expanded")
    open_nodes.discard(id(node))
    done[id(node)] = size, depth
    return size, depth


def _load_mapping(data: bytes) -> dict[str, object]:
    """The YAML mapping in ``data``, refused (ValueError or YAMLError) past the size, depth and expansion limits
    before any Python object is built from it."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"over the limit of {MAX_MANIFEST_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    _check_events(text)
    loader = SAFE_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _expanded(node, {}, set())
        loaded = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise ValueError("not a YAML mapping of field names to values")
    return loaded


def parse_manifest(data: bytes, source: str) -> StyleManifest:
    """A manifest from its bytes; anything wrong with them is a StyleFolderError naming the problem."""
    try:
        return StyleManifest.model_validate(_load_mapping(data))
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: also a bad date or an over-long integer in the YAML
        raise StyleFolderError(f"{source}: {exc}") from exc


def read_style(fs: AbstractFileSystem, folder: str, require_lora: bool = True) -> Style:
    """Read and validate one style folder (``style.yaml`` and the LoRA it names) on ``fs``."""
    manifest_url = f"{folder}/{MANIFEST_FILE}"
    if not fs.isfile(manifest_url):
        raise StyleFolderError(f"{folder}: no {MANIFEST_FILE}")
    with fs.open(manifest_url, "rb") as file:
        manifest = parse_manifest(file.read(MAX_MANIFEST_BYTES + 1), manifest_url)
    lora_url = f"{folder}/{manifest.lora.file}"
    if require_lora and not fs.isfile(lora_url):
        raise StyleFolderError(f"{folder}: LoRA file {manifest.lora.file!r} is missing")
    if manifest.preview is not None and not fs.isfile(f"{folder}/{manifest.preview}"):
        raise StyleFolderError(f"{folder}: preview image {manifest.preview!r} is missing")
    return Style(manifest=manifest, fs=fs, lora_url=lora_url)


@dataclass(frozen=True)
class PreviewImage:
    """A style's preview image, read whole and found to be a PNG, JPEG or WebP within the limits (made by
    ``checked_preview``), and the suffix of its stored file."""

    data: bytes
    suffix: str


def checked_preview(data: bytes) -> PreviewImage:
    """The preview image in ``data``; StyleFolderError unless it is a PNG, JPEG or WebP within the limits."""
    if len(data) > MAX_PREVIEW_BYTES:
        raise StyleFolderError(f"the preview is over the limit of {MAX_PREVIEW_BYTES} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            if image_format not in PREVIEW_FORMATS:
                raise StyleFolderError(f"the preview must be PNG, JPEG or WebP, not {image_format}")
            if image.width * image.height > MAX_PREVIEW_PIXELS:
                raise StyleFolderError(f"the preview has over {MAX_PREVIEW_PIXELS} pixels")
            image.load()
    except StyleFolderError:
        raise
    except Exception:  # whatever Pillow raises on a crafted or truncated file
        raise StyleFolderError("the preview is not a readable image") from None
    return PreviewImage(data, PREVIEW_FORMATS[image_format])


def load_style_folder(folder: Path) -> Style:
    """A local style folder, as a curator prepares it."""
    return read_style(LocalFileSystem(), str(Path(folder).resolve()))


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
    return datetime.now(UTC)


def split_style_ref(ref: str) -> tuple[str, int | None]:
    """(id, version or None) of ``id`` or ``id@version``; any other text names no style."""
    if not (isinstance(ref, str) and re.fullmatch(STYLE_REF_PATTERN, ref)):
        raise UnknownStyleError(f"{reprlib.repr(ref)} is not a style id or id@version")
    style_id, _, version = ref.partition("@")
    return style_id, int(version) if version else None


class StyleCatalog:
    """The versioned style library at a local path or any fsspec URL; every read goes to storage, so all
    replicas and restarts see the same library.

    Layout: ``<root>/<id>/style.yaml`` (+ LoRA) is a shipped folder holding the version its manifest names;
    ``<root>/<id>/<n>/`` holds published version n; ``<root>/<id>/state.json`` the curator's overrides.
    Versions are immutable. Publishing claims the next number by creating ``<n>/.claim`` exclusively (so
    concurrent publishers get distinct numbers), writes the LoRA, and commits by moving the manifest into place
    last: a version without ``style.yaml`` is unfinished and invisible.
    """

    def __init__(self, location: str | Path, require_lora: bool = True, clock: Clock = utc_now) -> None:
        self.location = str(location)
        # No listings cache: object stores' filesystems (s3fs, gcsfs) cache directory listings for good, so a
        # version another replica published would stay invisible to this one.
        self.fs, self.root = fsspec.core.url_to_fs(self.location, use_listings_cache=False)
        self.root = self.root.rstrip("/")
        if not self.fs.isdir(self.root):
            raise StyleFolderError(f"styles directory {self.location} does not exist")
        self.require_lora = require_lora
        self.clock = clock
        for style_id in self.ids():  # a broken library fails at start-up, not on the first request
            self.versions(style_id)

    def _url(self, style_id: str, version: int | None = None) -> str:
        """The folder of a style or of one of its versions: every path the catalogue touches is built here, from
        a checked id and version, so none leaves the library whatever a caller passes."""
        if not (isinstance(style_id, str) and re.fullmatch(STYLE_ID_PATTERN, style_id)):
            raise UnknownStyleError(f"{reprlib.repr(style_id)} is not a style id")
        if version is None:
            return f"{self.root}/{style_id}"
        if not (isinstance(version, int) and 1 <= version <= MAX_VERSION):
            raise UnknownStyleError(f"{reprlib.repr(version)} is not a style version")
        return f"{self.root}/{style_id}/{version}"

    def _children(self, url: str) -> list[str]:
        """Names of the sub-folders of ``url``."""
        if not self.fs.isdir(url):
            return []
        return [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(url, detail=True)
                if entry["type"] == "directory"]

    # -- reading -------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(name for name in self._children(self.root) if re.fullmatch(STYLE_ID_PATTERN, name))

    def _version_folders(self, style_id: str) -> list[int]:
        """Numbers of the version folders of a style, finished or not."""
        return [int(name) for name in self._children(self._url(style_id)) if re.fullmatch(VERSION_PATTERN, name)]

    def versions(self, style_id: str) -> dict[int, Style]:
        found = {}
        numbered = [self._url(style_id, number) for number in self._version_folders(style_id)]
        for version_folder in [self._url(style_id), *numbered]:
            if self.fs.isfile(f"{version_folder}/{MANIFEST_FILE}"):
                style = read_style(self.fs, version_folder, self.require_lora)
                if style.manifest.id != style_id:
                    raise StyleFolderError(f"{version_folder}: id {style.manifest.id!r} differs from {style_id!r}")
                found[style.manifest.version] = style
        return dict(sorted(found.items()))

    def state(self, style_id: str) -> StyleState:
        url = f"{self._url(style_id)}/{STATE_FILE}"
        if not self.fs.isfile(url):
            return StyleState()
        return StyleState.model_validate_json(self.fs.cat_file(url))

    def version(self, versioned_id: str) -> Style:
        """Any stored version by ``id@version``, whatever its status (replicas load LoRAs with this)."""
        style_id, version = split_style_ref(versioned_id)
        found = None if version is None else self.versions(style_id).get(version)
        if found is None:
            raise UnknownStyleError(f"unknown style version {versioned_id!r}")
        return found

    def _status_of(self, style_id: str, versions: dict[int, Style]) -> StyleStatus:
        """A style's status from its (non-empty) versions and its state."""
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

    def _read(self, style_id: str) -> tuple[StyleStatus, dict[int, Style]]:
        """A style's status and versions, from one read of its folder."""
        versions = self.versions(style_id)
        if not versions:
            raise UnknownStyleError(f"unknown style {style_id!r}; available: {', '.join(self.live_ids()) or 'none'}")
        return self._status_of(style_id, versions), versions

    def _read_all(self) -> Iterator[tuple[StyleStatus, dict[int, Style]]]:
        """Status and versions of every style that has versions, each folder read once."""
        for style_id in self.ids():
            versions = self.versions(style_id)
            if versions:
                yield self._status_of(style_id, versions), versions

    def status(self, style_id: str) -> StyleStatus:
        return self._read(style_id)[0]

    def statuses(self) -> list[StyleStatus]:
        """Every style, whatever its status (the admin listing)."""
        return [status for status, _ in self._read_all()]

    def list(self) -> list[Style]:
        """The default version of every style live now."""
        return [versions[status.default_version] for status, versions in self._read_all() if status.status == "live"]

    def live_ids(self) -> list[str]:
        return [style.manifest.id for style in self.list()]

    def get(self, style: str) -> Style:
        """The style a request names, ``id`` (its default version) or ``id@version``, if usable now."""
        style_id, version = split_style_ref(style)
        status, versions = self._read(style_id)
        if status.status != "live":
            raise StyleNotAvailableError(f"style {style_id!r} is {status.status}", status.status)
        if version is None:
            return versions[status.default_version]
        found = versions.get(version)
        if found is None:
            raise UnknownStyleError(f"unknown style version {style!r}; versions: {list(versions)}")
        return found

    # -- writing -------------------------------------------------------------------------------------------
    def publish(self, manifest: StyleManifest, lora: bytes, preview: PreviewImage | None = None) -> Style:
        """Store a new version of ``manifest.id`` (its ``version`` is replaced by the next free number) with its
        LoRA and, if given, its preview image."""
        preview_name = None if preview is None else PREVIEW_FILE + preview.suffix
        version = self._claim_version(manifest.id)
        target = self._url(manifest.id, version)
        lora_spec = manifest.lora.model_copy(update={"file": LORA_FILE, "sha256": hashlib.sha256(lora).hexdigest()})
        stored = manifest.model_copy(update={"version": version, "lora": lora_spec, "preview": preview_name})
        text = yaml.safe_dump(stored.model_dump(mode="json", exclude_none=True), sort_keys=False)
        try:
            self.fs.pipe_file(f"{target}/{LORA_FILE}", lora)
            if preview is not None:
                self.fs.pipe_file(f"{target}/{preview_name}", preview.data)
            self._replace(f"{target}/{MANIFEST_FILE}", text.encode("utf-8"))
        except BaseException:
            self.fs.rm(target, recursive=True)
            raise
        return Style(stored, self.fs, f"{target}/{LORA_FILE}")

    def _claim_version(self, style_id: str) -> int:
        version = max([*self._version_folders(style_id), *self.versions(style_id)], default=0) + 1
        while True:
            folder = self._url(style_id, version)
            self.fs.makedirs(folder, exist_ok=True)
            try:
                with self.fs.open(f"{folder}/{CLAIM_FILE}", "xb") as claim:
                    claim.write(b"claimed")
                return version
            except FileExistsError:
                version += 1

    def _replace(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``url`` so that readers see the old file or the new one, never a part."""
        temporary = f"{url.rsplit('/', 1)[0]}/.{uuid.uuid4().hex}.tmp"
        self.fs.pipe_file(temporary, data)
        self.fs.mv(temporary, url)

    def update_state(self, style_id: str, **changes) -> StyleState:
        """Change a style's overrides (schedule window, default version, retired)."""
        versions = self.versions(style_id)
        if not versions:
            raise UnknownStyleError(f"unknown style {style_id!r}")
        state = self.state(style_id).model_copy(update=changes)
        state = StyleState.model_validate(state.model_dump())
        if state.default_version is not None and state.default_version not in versions:
            message = f"style {style_id!r} has no version {state.default_version}"
            raise InvalidStyleError(message, {"default_version": message})
        if state.available_from and state.available_until and state.available_until <= state.available_from:
            message = "available_until must be after available_from"
            raise InvalidStyleError(message, {"available_until": message})
        self._replace(f"{self._url(style_id)}/{STATE_FILE}", state.model_dump_json(indent=2).encode("utf-8"))
        return state
