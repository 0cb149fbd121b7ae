"""The style library's storage at a local path or any fsspec URL: its layout, reading one style's folder (each
version read once: versions are immutable), writing versions and state, and the change marker every write leaves.

Layout: ``<root>/<id>/style.yaml`` (+ LoRA) is a shipped folder holding the version its manifest names;
``<root>/<id>/<n>/`` holds published version n; ``<root>/<id>/state.json`` the curator's overrides;
``<root>/.changes/<id>`` a marker rewritten (new random content, so a new ETag or mtime) after every write to the
style, so that a catalogue learns which styles changed from one listing (``serve_app.styles.view``).
Publishing claims the next number by creating ``<n>/.claim`` exclusively (so concurrent publishers get distinct
numbers), writes the LoRA, and commits by moving the manifest into place last: a version without ``style.yaml`` is
unfinished and invisible.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
import uuid
from dataclasses import dataclass, field

import fsspec
import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict

from serve_app.pipeline.errors import InvalidStyleError, StyleStoreUnavailableError, UnknownStyleError
from serve_app.styles.folder import PreviewImage, Style, read_style, store_errors
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
CHANGES_FOLDER = ".changes"
# What an object store's listing says of an object's content (S3 and Azure; GCS).
_CONTENT_KEYS = ("ETag", "etag", "md5Hash")


class StyleState(BaseModel):
    """A style's mutable state (``<id>/state.json``): overrides a curator set after publishing."""

    model_config = ConfigDict(extra="forbid")

    default_version: int | None = None
    available_from: AwareDatetime | None = None
    available_until: AwareDatetime | None = None
    retired: bool = False


@dataclass(frozen=True)
class StoredStyle:
    """What the store holds of one style: its finished versions (in order) and its state."""

    versions: dict[int, Style]
    state: StyleState = field(default_factory=StyleState)


def split_style_ref(ref: str) -> tuple[str, int | None]:
    """(id, version or None) of ``id`` or ``id@version``; any other text names no style."""
    if not (isinstance(ref, str) and re.fullmatch(STYLE_REF_PATTERN, ref)):
        raise UnknownStyleError(f"{reprlib.repr(ref)} is not a style id or id@version")
    style_id, _, version = ref.partition("@")
    return style_id, int(version) if version else None


def checked_style_id(style_id: str) -> str:
    if not (isinstance(style_id, str) and re.fullmatch(STYLE_ID_PATTERN, style_id)):
        raise UnknownStyleError(f"{reprlib.repr(style_id)} is not a style id")
    return style_id


class StyleStore:
    """The library's storage. Every path it touches is built by ``_url`` from a checked id and version, so none
    leaves the library whatever a caller passes; storage that cannot be reached raises StyleStoreUnavailableError."""

    def __init__(self, location: str, require_lora: bool = True) -> None:
        self.location = str(location)
        # No listings cache: object stores' filesystems (s3fs, gcsfs) cache directory listings for good, so a
        # version another replica published would stay invisible to this one.
        self.fs, root = fsspec.core.url_to_fs(self.location, use_listings_cache=False)
        self.root = root.rstrip("/")
        self.require_lora = require_lora
        self._read: dict[str, Style] = {}  # version folder -> its version, read once
        with store_errors(f"opening {self.location}"):
            if not self.fs.isdir(self.root):
                raise StyleFolderError(f"styles directory {self.location} does not exist")

    def _url(self, style_id: str, version: int | None = None) -> str:
        checked_style_id(style_id)
        if version is None:
            return f"{self.root}/{style_id}"
        if not (isinstance(version, int) and 1 <= version <= MAX_VERSION):
            raise UnknownStyleError(f"{reprlib.repr(version)} is not a style version")
        return f"{self.root}/{style_id}/{version}"

    # -- reading -------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        """Every folder named like a style (with versions or not)."""
        with store_errors("listing the styles"):
            if not self.fs.isdir(self.root):  # a bucket or mount gone: not a library without styles
                raise StyleStoreUnavailableError(f"the style library {self.location} is not there")
            names = [entry["name"].rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.root, detail=True)
                     if entry["type"] == "directory"]
        return sorted(name for name in names if re.fullmatch(STYLE_ID_PATTERN, name))

    def changes(self) -> dict[str, str]:
        """Each style's change marker: style id -> what changes in its listing entry when the marker is rewritten."""
        with store_errors("listing the change markers"):
            try:
                entries = self.fs.ls(f"{self.root}/{CHANGES_FOLDER}", detail=True)
            except FileNotFoundError:  # nothing was changed through a catalogue yet
                entries = []
        markers = {entry["name"].rsplit("/", 1)[-1]: entry for entry in entries if entry["type"] == "file"}
        return {name: self._signature(entry) for name, entry in markers.items() if re.fullmatch(STYLE_ID_PATTERN, name)}

    def _signature(self, entry: dict) -> str:
        """What tells one write of a marker from the next: its content's hash from an object store's listing, else
        its content (a local disk's timestamps are too coarse: two writes within a few ms share an mtime)."""
        content_hash = next((entry[key] for key in _CONTENT_KEYS if entry.get(key)), None)
        if content_hash is not None:
            return str(content_hash)
        with store_errors("reading a change marker"):
            return self.fs.cat_file(entry["name"]).decode("ascii", "replace")

    def read(self, style_id: str) -> StoredStyle | None:
        """A style's versions and state from one listing of its folder (versions read before are not read again);
        None when it has no finished version."""
        with store_errors(f"reading style {style_id}"):
            return self._read_listed(style_id, set(self.fs.find(self._url(style_id))))

    def _read_listed(self, style_id: str, files: set[str]) -> StoredStyle | None:
        """``read`` from the files a listing found under the style's folder."""
        url = self._url(style_id)
        folders = [url] + [f"{url}/{name}" for name in self._numbered(url, files)]
        versions = [
            self._version_at(style_id, folder, files) for folder in folders if f"{folder}/{MANIFEST_FILE}" in files
        ]
        if not versions:
            return None
        state_url = f"{url}/{STATE_FILE}"
        state = StyleState.model_validate_json(self.fs.cat_file(state_url)) if state_url in files else StyleState()
        return StoredStyle(dict(sorted((style.manifest.version, style) for style in versions)), state)

    @staticmethod
    def _numbered(url: str, files: set[str]) -> set[str]:
        """Names of the version folders (finished or not) among the files under a style's folder."""
        names = {path[len(url) + 1:].split("/", 1)[0] for path in files if path.count("/") > url.count("/") + 1}
        return {name for name in names if re.fullmatch(VERSION_PATTERN, name)}

    def _version_at(self, style_id: str, folder: str, files: set[str] | None = None) -> Style:
        if folder not in self._read:
            style = read_style(self.fs, folder, self.require_lora, files)
            if style.manifest.id != style_id:
                raise StyleFolderError(f"{folder}: id {style.manifest.id!r} differs from {style_id!r}")
            self._read[folder] = style
        return self._read[folder]

    def version(self, versioned_id: str) -> Style:
        """One stored version by ``id@version``, whatever its status: the stages load LoRAs with this, reading only
        that version's folder, once."""
        style_id, version = split_style_ref(versioned_id)
        if version is not None:
            with store_errors(f"reading style {versioned_id}"):
                for folder in (self._url(style_id, version), self._url(style_id)):
                    # A listing, not isfile: object stores' isfile answers False when the store cannot be reached.
                    files = None if folder in self._read else set(self.fs.find(folder, maxdepth=1))
                    if files is None or f"{folder}/{MANIFEST_FILE}" in files:
                        found = self._version_at(style_id, folder, files)
                        if found.manifest.version == version:
                            return found
        raise UnknownStyleError(f"unknown style version {versioned_id!r}")

    # -- writing -------------------------------------------------------------------------------------------
    def publish(self, manifest: StyleManifest, lora: bytes, preview: PreviewImage | None = None) -> Style:
        """Store a new version of ``manifest.id`` (its ``version`` is replaced by the next free number) with its
        LoRA and, if given, its preview image."""
        preview_name = None if preview is None else PREVIEW_FILE + preview.suffix
        with store_errors(f"publishing style {manifest.id}"):
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
            self._mark_changed(manifest.id)
        return Style(stored, self.fs, f"{target}/{LORA_FILE}")

    def _claim_version(self, style_id: str) -> int:
        url = self._url(style_id)
        files = set(self.fs.find(url))
        stored = self._read_listed(style_id, files)
        version = max([*map(int, self._numbered(url, files)), *(stored.versions if stored else ())], default=0) + 1
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

    def _mark_changed(self, style_id: str) -> None:
        self.fs.makedirs(f"{self.root}/{CHANGES_FOLDER}", exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{CHANGES_FOLDER}/{checked_style_id(style_id)}", uuid.uuid4().hex.encode())

    def update_state(self, style_id: str, **changes) -> StyleState:
        """Change a style's overrides (schedule window, default version, retired)."""
        url = self._url(style_id)
        with store_errors(f"changing style {style_id}"):
            stored = self.read(style_id)
            if stored is None:
                raise UnknownStyleError(f"unknown style {style_id!r}")
            state = StyleState.model_validate(stored.state.model_copy(update=changes).model_dump())
            if state.default_version is not None and state.default_version not in stored.versions:
                message = f"style {style_id!r} has no version {state.default_version}"
                raise InvalidStyleError(message, {"default_version": message})
            if state.available_from and state.available_until and state.available_until <= state.available_from:
                message = "available_until must be after available_from"
                raise InvalidStyleError(message, {"available_until": message})
            self._replace(f"{url}/{STATE_FILE}", state.model_dump_json(indent=2).encode("utf-8"))
            self._mark_changed(style_id)
        return state
