"""The versioned style library as the service uses it: styles' statuses (scheduled, live, expired, retired) from
what the view knows (``serve_app.styles.view``) and the clock; publishing and state changes through the store."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, Field

from serve_app.pipeline.errors import StyleNotAvailableError, StyleStoreUnavailableError, UnknownStyleError
from serve_app.styles.folder import PreviewImage, Style
from serve_app.styles.manifest import StyleManifest
from serve_app.styles.store import StoredStyle, StyleState, StyleStore, checked_style_id, split_style_ref
from serve_app.styles.view import LibraryView


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


class StyleCatalog:
    """The style library at a local path or any fsspec URL, read from a view kept in memory: requests never wait
    for storage, and every replica sees every other's changes within the view's bound.

    ``refresh_s``: follow the library's changes every that many seconds (the service; None: a one-off reader such
    as the CLI, which sees its own writes only). ``max_stale_s``: how long ``get`` serves from a view that could
    not be refreshed (the storage is unreachable) before it answers 503 ``store_unavailable``.
    """

    def __init__(
        self,
        location: str | Path,
        require_lora: bool = True,
        clock: Clock = utc_now,
        refresh_s: float | None = None,
        max_stale_s: float = 600.0,
    ) -> None:
        self.location = str(location)
        self.store = StyleStore(self.location, require_lora)
        self.view = LibraryView(self.store)  # a broken library fails here, at start-up, not on the first request
        self.clock = clock
        self.max_stale_s = math.inf if refresh_s is None else max_stale_s
        if refresh_s is not None:
            self.view.follow(refresh_s)

    def close(self) -> None:
        self.view.close()

    # -- reading -------------------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        return sorted(self.view.styles)

    def _stored(self, style_id: str) -> StoredStyle | None:
        return self.view.styles.get(checked_style_id(style_id))

    def versions(self, style_id: str) -> dict[int, Style]:
        stored = self._stored(style_id)
        return {} if stored is None else dict(stored.versions)

    def state(self, style_id: str) -> StyleState:
        stored = self._stored(style_id)
        return StyleState() if stored is None else stored.state

    def version(self, versioned_id: str) -> Style:
        """Any stored version by ``id@version``, whatever its status (a job another replica accepted runs with
        this): from the view, else from storage."""
        style_id, version = split_style_ref(versioned_id)
        found = self.versions(style_id).get(version) if version is not None else None
        return found or self.store.version(versioned_id)

    def _status_of(self, style_id: str, stored: StoredStyle) -> StyleStatus:
        state, versions = stored.state, stored.versions
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

    def _known(self, style_id: str) -> StoredStyle:
        stored = self._stored(style_id)
        if stored is None:
            raise UnknownStyleError(f"unknown style {style_id!r}; available: {', '.join(self.live_ids()) or 'none'}")
        return stored

    def status(self, style_id: str) -> StyleStatus:
        return self._status_of(style_id, self._known(style_id))

    def statuses(self) -> list[StyleStatus]:
        """Every style, whatever its status (the admin listing)."""
        return [self._status_of(style_id, stored) for style_id, stored in sorted(self.view.styles.items())]

    def list(self) -> list[Style]:
        """The default version of every style live now (the gallery: from the last good view, whatever its age)."""
        styles = sorted(self.view.styles.items())
        statuses = [(self._status_of(style_id, stored), stored) for style_id, stored in styles]
        return [stored.versions[status.default_version] for status, stored in statuses if status.status == "live"]

    def live_ids(self) -> list[str]:
        return [style.manifest.id for style in self.list()]

    def get(self, style: str) -> Style:
        """The style a request names, ``id`` (its default version) or ``id@version``, if usable now."""
        style_id, version = split_style_ref(style)
        if self.view.age() > self.max_stale_s:
            raise StyleStoreUnavailableError(
                f"the style library's storage has been unreachable for {self.view.age():.0f} s; retry later"
            )
        stored = self._known(style_id)
        status = self._status_of(style_id, stored)
        if status.status != "live":
            raise StyleNotAvailableError(f"style {style_id!r} is {status.status}", status.status)
        if version is None:
            return stored.versions[status.default_version]
        found = stored.versions.get(version)
        if found is None:
            raise UnknownStyleError(f"unknown style version {style!r}; versions: {list(stored.versions)}")
        return found

    # -- writing: to storage, then into this replica's view at once ---------------------------------------------
    def publish(self, manifest: StyleManifest, lora: bytes, preview: PreviewImage | None = None) -> Style:
        """Store a new version of ``manifest.id`` (its ``version`` is replaced by the next free number) with its
        LoRA and, if given, its preview image."""
        style = self.store.publish(manifest, lora, preview)
        self.view.reload(manifest.id)
        return style

    def update_state(self, style_id: str, **changes) -> StyleState:
        """Change a style's overrides (schedule window, default version, retired)."""
        state = self.store.update_state(style_id, **changes)
        self.view.reload(style_id)
        return state
