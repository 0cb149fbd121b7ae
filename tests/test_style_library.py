"""The versioned style library: publishing, versions, schedule windows (with an injected clock), retiring,
concurrent publishers, restarts, and names that try to leave the library."""

from __future__ import annotations

import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import fsspec
import pytest
import yaml

from serve_app.pipeline.errors import StyleNotAvailableError, UnknownStyleError
from serve_app.styles.catalog import StyleCatalog
from serve_app.styles.manifest import MAX_MANIFEST_BYTES, StyleFolderError, StyleManifest

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["local folder", "fsspec memory URL"])
def library(request, tmp_path, styles_dir):
    """The shipped styles copied to a local folder, or to an in-memory fsspec filesystem (as S3/GCS would be)."""
    if request.param == "local folder":
        shutil.copytree(styles_dir, tmp_path / "styles")
        location = str(tmp_path / "styles")
    else:
        location = f"memory://{uuid.uuid4().hex}/styles"
        fsspec.filesystem("memory").put(str(styles_dir), location, recursive=True)
    clock = Clock(NOW)
    return StyleCatalog(location, clock=clock), clock


def manifest(style_id: str = "snow-globe", **fields) -> StyleManifest:
    return StyleManifest(id=style_id, title="Snow globe", prompt_template="{subject} inside a snow globe", **fields)


def lora_bytes(styles_dir) -> bytes:
    return (styles_dir / "film-noir" / "lora.safetensors").read_bytes()


def test_publish_creates_versions_and_pins(library, styles_dir):
    catalog, _ = library
    first = catalog.publish(manifest(), lora_bytes(styles_dir))
    second = catalog.publish(manifest(negative_prompt="blurry"), lora_bytes(styles_dir))
    assert (first.versioned_id, second.versioned_id) == ("snow-globe@1", "snow-globe@2")
    assert catalog.get("snow-globe").versioned_id == "snow-globe@2"
    assert catalog.get("snow-globe@1").manifest.negative_prompt == ""
    assert len(second.manifest.lora.sha256) == 64
    stored = yaml.safe_load(catalog.store.fs.cat_file(f"{catalog.store.root}/snow-globe/2/style.yaml"))
    assert stored["version"] == 2 and stored["lora"]["sha256"] == second.manifest.lora.sha256
    # a shipped folder's manifest version counts: the next film-noir is 2
    assert catalog.publish(manifest("film-noir"), lora_bytes(styles_dir)).versioned_id == "film-noir@2"
    catalog.update_state("snow-globe", default_version=1)
    assert catalog.get("snow-globe").versioned_id == "snow-globe@1"


def test_schedule_windows_follow_the_clock(library, styles_dir):
    catalog, clock = library
    catalog.publish(
        manifest(available_from=NOW + timedelta(days=20), available_until=NOW + timedelta(days=30)),
        lora_bytes(styles_dir),
    )
    assert catalog.status("snow-globe").status == "scheduled"
    with pytest.raises(StyleNotAvailableError) as error:
        catalog.get("snow-globe")
    assert (error.value.code, error.value.http_status) == ("style_scheduled", 404)
    assert "snow-globe" not in [s.manifest.id for s in catalog.list()]
    clock.now = NOW + timedelta(days=21)
    assert catalog.get("snow-globe").versioned_id == "snow-globe@1"
    assert "snow-globe" in [s.manifest.id for s in catalog.list()]
    clock.now = NOW + timedelta(days=30)
    with pytest.raises(StyleNotAvailableError) as error:
        catalog.get("snow-globe@1")
    assert (error.value.code, error.value.http_status) == ("style_expired", 410)
    catalog.update_state("snow-globe", available_until=NOW + timedelta(days=40))  # the curator extends it
    assert catalog.status("snow-globe").status == "live"


def test_retired_styles_are_refused_but_kept(library):
    catalog, _ = library
    catalog.update_state("film-noir", retired=True)
    with pytest.raises(StyleNotAvailableError) as error:
        catalog.get("film-noir")
    assert (error.value.code, error.value.http_status) == ("style_retired", 410)
    assert catalog.version("film-noir@1").versioned_id == "film-noir@1"  # replicas finish in-flight work
    with pytest.raises(UnknownStyleError):
        catalog.get("no-such-style")


def test_ten_concurrent_publishes_give_ten_intact_versions(library, styles_dir):
    catalog, _ = library
    data = lora_bytes(styles_dir)
    with ThreadPoolExecutor(10) as pool:
        published = list(pool.map(lambda i: catalog.publish(manifest(description=f"take {i}"), data), range(10)))
    assert sorted(s.manifest.version for s in published) == list(range(1, 11))
    versions = catalog.versions("snow-globe")
    assert sorted(versions) == list(range(1, 11))
    assert {v.manifest.description for v in versions.values()} == {f"take {i}" for i in range(10)}
    assert all(v.read_lora() == data for v in versions.values())
    files = [path.rsplit("/", 1)[-1] for path in catalog.store.fs.find(f"{catalog.store.root}/snow-globe")]
    assert sorted(set(files)) == [".claim", "lora.safetensors", "style.yaml"]  # no temporary files left


def test_a_restart_sees_the_same_library(library, styles_dir):
    catalog, clock = library
    catalog.publish(manifest(), lora_bytes(styles_dir))
    catalog.update_state("xmas-sweater", retired=True)
    reopened = StyleCatalog(catalog.location, clock=clock)
    assert [reopened.status(i) for i in reopened.ids()] == [catalog.status(i) for i in catalog.ids()]


@pytest.mark.parametrize("pin", ["film-noir@7", "film-noir@latest", "film-noir@-1"])
def test_unknown_versions_are_404(library, pin):
    catalog, _ = library
    with pytest.raises(UnknownStyleError) as error:
        catalog.get(pin)
    assert (error.value.code, error.value.http_status) == ("unknown_style", 404)


# Each is refused by the catalogue itself, before it asks its storage anything.
HOSTILE_NAMES = [
    "", ".", "..", "/", "../styles/film-noir", "film-noir/.", "film-noir/..", "/etc/passwd", "a/b", ".hidden",
    "film-noir\x00", "\x00", "%00", "film-noir\n", " film-noir", "film-noir ", "Film-Noir", "f\u0131lm-noir",
    "film\u2010noir", "\uff46ilm-noir", "film-noir\\..", "-film-noir", "a" * 64, "film-noir@", "@1", "film-noir@../1",
    "film-noir@1/..", "film-noir@01", "film-noir@0", "film-noir@-1", "film-noir@\u00b2", "film-noir@\u0661",
    "film-noir@1@1", "film-noir@1234567890", "film-noir@1\n",
]


class RecordingFileSystem:
    """Forwards every call to a filesystem, noting the paths it is given (the first argument; both of ``mv``)."""

    def __init__(self, fs) -> None:
        self.fs, self.paths = fs, []

    def __getattr__(self, name: str):
        method = getattr(self.fs, name)

        def recorded(*args, **kwargs):
            self.paths += list(args[: 2 if name == "mv" else 1])
            return method(*args, **kwargs)

        return recorded


def hostile_calls(catalog: StyleCatalog, name: str) -> dict:
    return {
        "get": lambda: catalog.get(name),
        "version": lambda: catalog.version(name),
        "versions": lambda: catalog.versions(name),
        "state": lambda: catalog.state(name),
        "status": lambda: catalog.status(name),
        "update_state": lambda: catalog.update_state(name, retired=True),
        "publish": lambda: catalog.publish(StyleManifest.model_construct(**{**manifest().__dict__, "id": name}), b""),
    }


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_never_reach_storage(library, name):
    catalog, _ = library
    catalog.store.fs = recording = RecordingFileSystem(catalog.store.fs)
    for method, call in hostile_calls(catalog, name).items():
        with pytest.raises(UnknownStyleError):
            call()
        assert recording.paths == [], method


def test_a_pin_is_no_id(library):
    catalog, _ = library
    catalog.store.fs = recording = RecordingFileSystem(catalog.store.fs)
    for method in ("versions", "state", "status", "update_state", "publish"):
        with pytest.raises(UnknownStyleError):
            hostile_calls(catalog, "film-noir@1")[method]()
        assert recording.paths == [], method
    assert catalog.get("film-noir@1").versioned_id == catalog.version("film-noir@1").versioned_id == "film-noir@1"


@pytest.mark.parametrize("ref", ["no-such-style", "no-such-style@1", "film-noir@7", "film-noir@999999999"])
def test_unknown_names_are_looked_up_inside_the_library_only(library, ref):
    """A request's style is answered from the view, without storage; a version the view lacks (a job another
    replica accepted) is looked up in storage, inside the library."""
    catalog, _ = library
    catalog.store.fs = recording = RecordingFileSystem(catalog.store.fs)
    with pytest.raises(UnknownStyleError):
        catalog.get(ref)
    assert recording.paths == []
    with pytest.raises(UnknownStyleError):
        catalog.version(ref if "@" in ref else f"{ref}@1")
    assert recording.paths and all(path == catalog.store.root or path.startswith(f"{catalog.store.root}/") for path in recording.paths)
    assert not any(part in ("", ".", "..") for path in recording.paths for part in path.split("/")[1:])


def test_folders_that_only_look_like_styles_or_versions_are_ignored(library):
    catalog, _ = library
    shipped = catalog.store.fs.cat_file(f"{catalog.store.root}/film-noir/style.yaml")
    for folder in ["Film-Noir", ".film-noir", "film-noir/01", "film-noir/0", "film-noir/\u0661", "film-noir/\u00b2"]:
        catalog.store.fs.makedirs(f"{catalog.store.root}/{folder}", exist_ok=True)
        catalog.store.fs.pipe_file(f"{catalog.store.root}/{folder}/style.yaml", shipped)
    assert catalog.ids() == ["film-noir", "summer-beach", "xmas-sweater"]
    assert list(catalog.versions("film-noir")) == [1]
    assert StyleCatalog(catalog.location).publish(manifest("film-noir"), b"x").versioned_id == "film-noir@2"


def test_an_oversize_library_manifest_is_refused_unread(library):
    catalog, _ = library
    catalog.store.fs.pipe_file(f"{catalog.store.root}/film-noir/style.yaml", b"# padding\n" * (MAX_MANIFEST_BYTES // 10 + 1))
    with pytest.raises(StyleFolderError, match="over the limit"):
        StyleCatalog(catalog.location)  # a broken library fails at start-up
