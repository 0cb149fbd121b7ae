"""The freshness rule: what a catalogue knows of the library, and how it keeps that current.

- Start-up reads every style once: one listing of the library, then one listing of each style's folder, its state
  and each version's manifest, in parallel. A version is read once for the life of the process (versions are
  immutable); LoRA files are never read here.
- Every ``refresh_s`` (0.5 s by default) a refresher thread lists the change markers, one listing whatever the
  library's size, and rereads only the styles whose marker changed (``serve_app.styles.store``): a publish or a state
  change made through any replica is seen within ``refresh_s`` plus one refresh (tens of milliseconds).
- Every ``RESCAN_S`` it rereads every style's listing, for folders copied into the library without the catalogue.
- Requests read the view in memory and never wait for storage. A refresh that fails keeps the last good view;
  ``age()`` is the time since the last refresh that succeeded began (what the view may have missed).
- Schedule windows are applied with the clock at each read (``serve_app.styles.catalog``), so a scheduled style
  goes live at its time without any write.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

from serve_app.styles.manifest import StyleFolderError
from serve_app.styles.store import StoredStyle, StyleStore

logger = logging.getLogger(__name__)

RESCAN_S = 60.0
READERS = 16  # storage round trips in flight while reading many styles (a start-up on S3 is latency-bound)


class LibraryView:
    """The styles a catalogue knows, replaced whole on every change, so readers need no lock."""

    def __init__(self, store: StyleStore) -> None:
        self.store = store
        self._writing = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.styles: Mapping[str, StoredStyle] = {}
        # When the read behind each style's entry began: reads run in parallel with writes and with each other, and
        # one that began earlier (and so may miss a write) never replaces one that began later.
        self._tickets = itertools.count()
        self._read_at: dict[str, int] = {}
        self._signatures: dict[str, str] = {}
        self.good_at = self._rescanned_at = time.monotonic()
        self.rescan(strict=True)

    def age(self) -> float:
        """Seconds since the last refresh that succeeded began: what the view may have missed."""
        return time.monotonic() - self.good_at

    def rescan(self, strict: bool = False) -> None:
        """Reread every style's folder; ``strict``: a broken style folder raises (a start-up) instead of keeping
        what was read of it before."""
        started = time.monotonic()
        signatures, ids = self.store.changes(), self.store.ids()
        ticket, present = next(self._tickets), set(ids)
        read = self._read_many(ids, strict)
        with self._writing:
            merged = self._merged(read, ticket)
            self.styles = {style_id: stored for style_id, stored in merged.items() if style_id in present}
            self._signatures = signatures
            self.good_at = self._rescanned_at = started

    def refresh(self) -> None:
        """Reread the styles whose change marker changed since the last look."""
        started = time.monotonic()
        signatures = self.store.changes()  # before the reads: a change made during them is seen next time
        changed = [style_id for style_id, mark in signatures.items() if self._signatures.get(style_id) != mark]
        ticket = next(self._tickets)
        read = self._read_many(changed, strict=False)
        with self._writing:
            self.styles = self._merged(read, ticket)
            self._signatures = {**self._signatures, **signatures}
            self.good_at = started

    def reload(self, style_id: str) -> None:
        """Reread one style now (this replica's own write: read-your-writes)."""
        ticket = next(self._tickets)
        read = self._read_many([style_id], strict=True)
        with self._writing:
            self.styles = self._merged(read, ticket)

    def _merged(self, read: Mapping[str, StoredStyle | None], ticket: int) -> dict[str, StoredStyle]:
        """The view with ``read`` (begun at ``ticket``) applied, style by style, where no later read is held."""
        newer = {style_id: stored for style_id, stored in read.items() if self._read_at.get(style_id, -1) < ticket}
        self._read_at.update(dict.fromkeys(newer, ticket))
        styles = {**self.styles, **newer}
        return {style_id: stored for style_id, stored in styles.items() if stored is not None}

    def _read_many(self, ids: Iterable[str], strict: bool) -> dict[str, StoredStyle | None]:
        """Each style's folder (None: no finished version), in parallel; a broken folder raises when ``strict``,
        else it is logged and left out of the result (the view keeps what it had of that style)."""

        def read(style_id: str) -> tuple[str, StoredStyle | None] | None:
            try:
                return style_id, self.store.read(style_id)
            except StyleFolderError as error:
                if strict:
                    raise
                logger.warning("style %s left as it was: %s", style_id, error)
                return None

        ids = list(ids)
        if len(ids) <= 1:
            results = [read(style_id) for style_id in ids]
        else:
            with ThreadPoolExecutor(min(READERS, len(ids)), thread_name_prefix="style-reader") as pool:
                results = list(pool.map(read, ids))
        return dict(result for result in results if result is not None)

    # -- the refresher ---------------------------------------------------------------------------------------
    def follow(self, refresh_s: float) -> None:
        """Refresh every ``refresh_s`` seconds in a daemon thread until ``close()``."""
        self._thread = threading.Thread(target=self._follow, args=(refresh_s,), name="style-view", daemon=True)
        self._thread.start()

    def _follow(self, refresh_s: float) -> None:
        failing = False
        while not self._stopped.wait(refresh_s):
            try:
                if time.monotonic() - self._rescanned_at >= RESCAN_S:
                    self.rescan()
                else:
                    self.refresh()
                if failing:
                    logger.warning("style library reachable again; the view is current")
                failing = False
            except Exception as error:  # keep the last good view, whatever storage does
                if not failing:
                    logger.warning("style library unreachable, serving the view of %.1f s ago: %s", self.age(), error)
                failing = True

    def close(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
