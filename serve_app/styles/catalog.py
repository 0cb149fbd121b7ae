"""The versioned style library at a local path or any fsspec URL: versions, state, publishing and retirement."""

from __future__ import annotations

import hashlib
import re
import reprlib
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from serve_app.pipeline.errors import InvalidStyleError, StyleNotAvailableError, UnknownStyleError
from serve_app.styles.folder import PreviewImage, Style, read_style
from serve_app.styles.manifest import (
    LORA_FILE,
    MANIFEST_FILE,
    MAX_VERSION,
    PREVIEW_FILE,
    STYLE_ID_PATTERN,
    STYLE_REF_PATTERN,
    VERSION_PATTERN,
    StyleFolderError,
    StyleManifest,
)

STATE_FILE = "state.json"
CLAIM_FILE = ".claim"


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
