"""Freshness and storage faults of the style catalogue, as ingress replicas see them: two catalogues over one store
(a local folder, and S3 through moto's server), one writing, one following the library's changes.

- A publish, a new default version, a schedule and a retirement written through one are seen by the other once a
  refresh that began after the write has finished: within ``refresh_s`` plus one refresh (the stated bound).
- A scheduled style goes live at its time with no write and no storage access.
- With the store stopped: known styles keep being served and the gallery answers from the last good view; writes
  raise ``store_unavailable`` (503) and change nothing; past ``max_stale_s`` a request's style is refused with
  ``store_unavailable`` too, while the gallery still answers; once the store is back, the view catches up.
"""

from __future__ import annotations

import itertools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pytest
from curation import manifest_yaml
from s3_server import s3_server
from test_style_library import Clock, RecordingFileSystem

from serve_app.pipeline.errors import StyleNotAvailableError, StyleStoreUnavailableError
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import parse_manifest

BUCKET = "fresh-styles"
REFRESH_S = 0.05


def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    with s3_server(BUCKET):
        yield f"s3://{BUCKET}"


@pytest.fixture(params=["local folder", "s3"])
def library(request, tmp_path: Path, styles_dir: Path) -> str:
    """A fresh copy of the shipped styles on a local folder or on S3."""
    if request.param == "local folder":
        shutil.copytree(styles_dir, tmp_path / "styles")
        return str(tmp_path / "styles")
    url = f"{request.getfixturevalue('s3_bucket')}/{request.node.name.replace('[', '-').rstrip(']')}"
    fsspec.filesystem("s3").put(str(styles_dir), url, recursive=True)
    return url


@pytest.fixture
def follower(library: str) -> Iterator[StyleCatalog]:
    catalog = StyleCatalog(library, refresh_s=REFRESH_S)
    yield catalog
    catalog.close()


def lora(styles_dir: Path) -> bytes:
    return (styles_dir / "film-noir" / "lora.safetensors").read_bytes()


def seen_after(reader: StyleCatalog, write: Callable[[], object]) -> None:
    """Make the write, then wait for a refresh of ``reader`` that began after it returned to finish."""
    write()
    written_at = time.monotonic()
    wait_until(lambda: reader.view.good_at > written_at)


def test_every_kind_of_change_is_seen_by_another_catalogue_within_a_refresh(library, follower, styles_dir):
    writer = StyleCatalog(library)
    assert follower.get("film-noir").versioned_id == "film-noir@1"

    seen_after(follower, lambda: writer.publish(parse_manifest(manifest_yaml("film-noir"), "m"), lora(styles_dir)))
    assert follower.get("film-noir").versioned_id == "film-noir@2"  # a new version is the default

    seen_after(follower, lambda: writer.publish(parse_manifest(manifest_yaml("night-train"), "m"), lora(styles_dir)))
    assert "night-train@1" in [style.versioned_id for style in follower.list()]  # a new style

    seen_after(follower, lambda: writer.update_state("film-noir", default_version=1))
    assert follower.get("film-noir").versioned_id == "film-noir@1"

    later = datetime.now(UTC) + timedelta(days=1)
    seen_after(follower, lambda: writer.update_state("summer-beach", available_from=later))
    with pytest.raises(StyleNotAvailableError) as scheduled:
        follower.get("summer-beach")
    assert (scheduled.value.code, scheduled.value.http_status) == ("style_scheduled", 404)

    seen_after(follower, lambda: writer.update_state("xmas-sweater", retired=True))
    with pytest.raises(StyleNotAvailableError) as retired:
        follower.get("xmas-sweater")
    assert (retired.value.code, retired.value.http_status) == ("style_retired", 410)
    assert [s.versioned_id for s in follower.list()] == [s.versioned_id for s in StyleCatalog(library).list()]


def test_one_refresh_lists_the_markers_once_and_reads_only_what_changed(library, styles_dir):
    reader, writer = StyleCatalog(library), StyleCatalog(library)
    writer.update_state("xmas-sweater", retired=True)
    reader.store.fs = recording = RecordingFileSystem(reader.store.fs)
    reader.view.refresh()
    assert reader.status("xmas-sweater").status == "retired"
    touched = {path.rstrip("/").removeprefix(reader.store.root + "/").split("/")[0] for path in recording.paths}
    assert touched == {".changes", "xmas-sweater"}
    recording.paths.clear()
    reader.view.refresh()  # nothing changed: the markers' listing (and, on a local disk, the markers' content)
    assert recording.paths and all(path.startswith(f"{reader.store.root}/.changes") for path in recording.paths)


def test_a_read_that_began_earlier_never_replaces_a_later_one(tmp_path, styles_dir, monkeypatch):
    """Two publishes through one catalogue whose reloads finish out of order: the view keeps what the later read
    saw (both new versions), not the earlier read's one."""
    shutil.copytree(styles_dir, tmp_path / "styles")
    catalog = StyleCatalog(tmp_path / "styles")
    read, calls = catalog.store.read, itertools.count()
    first_read, release = threading.Event(), threading.Event()

    def first_read_finishes_last(style_id: str):
        stored = read(style_id)
        if next(calls) == 0:
            first_read.set()
            assert release.wait(30)
        return stored

    monkeypatch.setattr(catalog.store, "read", first_read_finishes_last)
    publish = lambda: catalog.publish(parse_manifest(manifest_yaml("film-noir"), "m"), lora(styles_dir))  # noqa: E731
    with ThreadPoolExecutor(1) as pool:
        earlier = pool.submit(publish)
        assert first_read.wait(30)
        publish()
        release.set()
        earlier.result()
    assert sorted(catalog.versions("film-noir")) == [1, 2, 3]
    assert catalog.get("film-noir").versioned_id == "film-noir@3"


def test_a_scheduled_style_goes_live_at_its_time_without_any_write_or_read(tmp_path, styles_dir):
    shutil.copytree(styles_dir, tmp_path / "styles")
    clock = Clock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    writer, reader = StyleCatalog(tmp_path / "styles"), StyleCatalog(tmp_path / "styles", clock=clock)
    writer.update_state("xmas-sweater", available_from=clock.now + timedelta(hours=1))
    reader.view.refresh()
    with pytest.raises(StyleNotAvailableError):
        reader.get("xmas-sweater")
    reader.store.fs = recording = RecordingFileSystem(reader.store.fs)
    clock.now += timedelta(hours=1)
    assert reader.get("xmas-sweater").versioned_id == "xmas-sweater@1"
    assert "xmas-sweater" in reader.live_ids() and recording.paths == []


def test_a_store_outage_serves_what_is_known_refuses_writes_and_catches_up(styles_dir):
    with s3_server("outage-styles") as server:
        url = "s3://outage-styles/styles"
        fsspec.filesystem("s3").put(str(styles_dir), url, recursive=True)
        writer, reader = StyleCatalog(url), StyleCatalog(url, refresh_s=REFRESH_S, max_stale_s=2)
        try:
            gallery, statuses = [s.versioned_id for s in reader.list()], reader.statuses()
            server.stop()
            wait_until(lambda: reader.view.age() > 5 * REFRESH_S)  # refreshes fail
            assert reader.get("film-noir").versioned_id == "film-noir@1"
            for write in (lambda: writer.publish(parse_manifest(manifest_yaml("film-noir"), "m"), lora(styles_dir)),
                          lambda: writer.update_state("film-noir", retired=True)):
                with pytest.raises(StyleStoreUnavailableError) as refused:
                    write()
                assert (refused.value.code, refused.value.http_status) == ("store_unavailable", 503)

            wait_until(lambda: reader.view.age() > 2)  # past max_stale_s
            with pytest.raises(StyleStoreUnavailableError):
                reader.get("film-noir")
            assert [s.versioned_id for s in reader.list()] == gallery  # the gallery: the last good view

            server.start()
            wait_until(lambda: reader.view.age() < 1)
            assert reader.get("film-noir").versioned_id == "film-noir@1"
            assert reader.statuses() == statuses == StyleCatalog(url).statuses()  # the refused writes left nothing
        finally:
            reader.close()
