"""The production weights folder: its manifest (``configs/weights.yaml``), fetching from the Hugging Face Hub
(pickle checkpoints converted to safetensors, loaded with ``weights_only=True``), and the offline file check
(presence and sha256 against the lock file the fetch writes).

Layout: ``DIR/<model>/<file>`` as in the source repository (``.pth``/``.bin`` renamed ``.safetensors`` when
converted) and ``DIR/weights.lock.json`` recording each stored file's sha256 and where it came from.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Literal

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import save_file

from serve_app.pipeline.settings import COMMERCIAL_PROFILES, WEIGHTS_PROFILES, ModelSettings

DEFAULT_MANIFEST = Path(__file__).resolve().parents[3] / "configs" / "weights.yaml"
COMMERCIAL_MANIFEST = DEFAULT_MANIFEST.with_name("weights-commercial.yaml")
LOCK_FILE = "weights.lock.json"
CHECKPOINT_WRAPPERS = ("params_ema", "params", "state_dict")  # basicsr keeps the EMA weights under params_ema
HASH_CHUNK = 16 * 1024 * 1024

Downloader = Callable[[str, str, str, Path], Path]
"""``download(repo, file, revision, folder)`` → the downloaded file's path."""


class WeightsError(RuntimeError):
    """Production weights are missing, corrupt or cannot be fetched; the message names the files."""


class WeightFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="path inside the source repository")
    sha256: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="of the published file (its LFS oid); null: trust on first fetch"
    )
    convert: Literal["safetensors"] | None = Field(None, description="pickle checkpoint converted at fetch time")

    @property
    def stored(self) -> str:
        """The file's name in the weights folder."""
        path = PurePosixPath(self.file)
        return str(path.with_suffix(".safetensors")) if self.convert else str(path)


class WeightModel(BaseModel):
    """A model's files: fetched from a Hugging Face ``repo`` at a ``revision``, or shipped inside an installed
    Python ``package`` (then every file has its sha256, checked in place; nothing is fetched)."""

    model_config = ConfigDict(extra="forbid")

    stages: list[str]
    licence: str
    commercial_use: bool
    repo: str | None = None
    package: str | None = Field(None, description="the import name of the package whose files these are")
    revision: str = "main"
    files: list[WeightFile] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> WeightModel:
        if (self.repo is None) == (self.package is None):
            raise ValueError("a model comes from exactly one of repo and package")
        if self.package and any(weight.sha256 is None for weight in self.files):
            raise ValueError(f"every file of package {self.package!r} needs its sha256")
        return self


class WeightsManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[str, WeightModel]

    def entries(self) -> Iterator[tuple[str, WeightModel, WeightFile]]:
        """Every file fetched into the weights folder (packaged files are not)."""
        for name, model in self.models.items():
            if model.package is None:
                for weight in model.files:
                    yield name, model, weight

    def packaged_file(self, name: str, file: str | None = None) -> Path:
        """A packaged model's file (its only one when ``file`` is None), checked against its sha256."""
        model = self.models[name]
        weights = [weight for weight in model.files if file is None or weight.file == file]
        if model.package is None or len(weights) != 1:
            raise WeightsError(f"model {name!r} has no packaged file {file or ''}".rstrip())
        path = package_folder(model.package) / weights[0].file
        if problem := packaged_file_problem(path, weights[0]):
            raise WeightsError(problem)
        return path

    def packaged_problems(self) -> list[str]:
        """Problems with the packaged models' files, one line per file."""
        problems = []
        for name, model in self.models.items():
            if model.package is not None:
                folder = package_folder(model.package)
                problems += filter(None, (packaged_file_problem(folder / weight.file, weight) for weight in model.files))
        return problems

    def not_cleared(self) -> list[str]:
        """The models not marked for commercial use, each with its licence."""
        return [f"{name} ({model.licence})" for name, model in self.models.items() if not model.commercial_use]


def package_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WeightsError(f"the package {package!r} is not installed")
    return Path(spec.origin).parent


@functools.cache
def _cached_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def packaged_file_problem(path: Path, weight: WeightFile) -> str | None:
    if not path.is_file():
        return f"{path}: missing from its package"
    stat = path.stat()
    if _cached_sha256(path, stat.st_size, stat.st_mtime_ns) != weight.sha256:
        return f"{path}: its sha256 is not the manifest's {weight.sha256}"
    return None


def default_manifest(profile: str) -> Path:
    """The repository's manifest of a profile's weights: ``configs/weights-commercial.yaml`` for the commercial
    profiles, ``configs/weights.yaml`` for the others."""
    return COMMERCIAL_MANIFEST if profile in COMMERCIAL_PROFILES else DEFAULT_MANIFEST


def load_manifest(path: Path | None = None) -> WeightsManifest:
    """The manifest at ``path``, by default the repository's ``configs/weights.yaml``."""
    return WeightsManifest.model_validate(yaml.safe_load(Path(path or DEFAULT_MANIFEST).read_text(encoding="utf-8")))


def check_profile_weights(settings: ModelSettings) -> None:
    """Refuse, before serving, what a profile must not or cannot load: a commercial profile's models not cleared
    for commercial use, a weights folder's missing or corrupt files, a packaged model's changed file."""
    if settings.profile not in COMMERCIAL_PROFILES + WEIGHTS_PROFILES:
        return  # tiny and full-size build every model in code
    manifest = load_manifest(settings.weights_manifest or default_manifest(settings.profile))
    require_cleared(manifest, settings.profile)
    problems = check_files(settings.weights_dir, manifest) if settings.weights_dir else manifest.packaged_problems()
    if problems:
        raise WeightsError(f"the {settings.profile} profile's weights are not usable:\n  " + "\n  ".join(problems))


def require_cleared(manifest: WeightsManifest, profile: str) -> None:
    """A commercial profile refuses a manifest with any model not marked ``commercial_use: true``, naming them."""
    if profile in COMMERCIAL_PROFILES and (names := manifest.not_cleared()):
        raise WeightsError(
            f"the {profile} profile loads only models cleared for commercial use; not cleared: {', '.join(names)}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stored_path(name: str, weight: WeightFile) -> str:
    """A file's path relative to the weights folder (the lock file's key)."""
    return f"{name}/{weight.stored}"


def read_lock(folder: Path) -> dict[str, dict]:
    path = folder / LOCK_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def record(folder: Path, relative: str, source: str, source_sha256: str | None) -> None:
    """Enter a stored file in the lock (rewritten atomically)."""
    lock = read_lock(folder)
    lock[relative] = {"sha256": file_sha256(folder / relative), "source": source, "source_sha256": source_sha256}
    write_atomically(folder / LOCK_FILE, lambda path: path.write_text(json.dumps(lock, indent=2, sort_keys=True)))


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)


def check_files(folder: Path, manifest: WeightsManifest) -> list[str]:
    """Problems with the weights folder, one line per file (empty when every file is present and intact)."""
    if not folder.is_dir():
        return [f"{folder}: the weights folder does not exist; run `python -m serve_app weights fetch --dir {folder}`"]
    lock = read_lock(folder)
    problems = (file_problem(folder, lock, name, weight) for name, _, weight in manifest.entries())
    return [problem for problem in problems if problem] + manifest.packaged_problems()


def file_problem(folder: Path, lock: dict[str, dict], name: str, weight: WeightFile) -> str | None:
    relative = stored_path(name, weight)
    path, entry = folder / relative, lock.get(relative)
    if not path.is_file():
        return f"{path}: missing"
    if entry is None:
        return f"{path}: not in {LOCK_FILE} (not stored by `weights fetch`)"
    if weight.sha256 and entry.get("source_sha256") != weight.sha256:
        return f"{path}: fetched from a file whose sha256 is not the manifest's {weight.sha256}"
    if file_sha256(path) != entry["sha256"]:
        return f"{path}: corrupt (sha256 differs from {LOCK_FILE})"
    return None


def require_files(folder: Path, manifest: WeightsManifest) -> None:
    if problems := check_files(folder, manifest):
        raise WeightsError("production weights are not usable:\n  " + "\n  ".join(problems))


def hub_download(repo: str, file: str, revision: str, folder: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo, filename=file, revision=revision, local_dir=folder))


def fetch(folder: Path, manifest: WeightsManifest, download: Downloader = hub_download) -> list[str]:
    """Download what is missing or corrupt, check the published sha256, convert pickles; returns what it stored."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = []
    for name, model, weight in manifest.entries():
        relative = stored_path(name, weight)
        if file_problem(folder, read_lock(folder), name, weight) is None:
            continue
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            try:
                source = download(model.repo, weight.file, model.revision, Path(scratch))
            except Exception as error:
                raise WeightsError(f"{model.repo}/{weight.file}@{model.revision}: cannot download: {error}") from error
            source_sha256 = file_sha256(source)
            if weight.sha256 and source_sha256 != weight.sha256:
                raise WeightsError(
                    f"{model.repo}/{weight.file}@{model.revision}: sha256 {source_sha256} is not the manifest's "
                    f"{weight.sha256}; the file changed upstream or the download is corrupt"
                )
            store = convert_to_safetensors if weight.convert else shutil.copyfile
            write_atomically(folder / relative, functools.partial(store, source))
        record(folder, relative, f"{model.repo}/{weight.file}@{model.revision}", source_sha256)
        stored.append(relative)
    return stored


def convert_to_safetensors(checkpoint: Path, target: Path) -> None:
    """A pickle checkpoint (read with ``weights_only=True``: tensors and plain containers, no code) as a flat
    safetensors file. basicsr wrappers are unwrapped (EMA weights first); nested dicts (IP-Adapter's
    ``image_proj``/``ip_adapter``) get dotted keys, the layout diffusers reads from safetensors."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    save_file(flatten_state_dict(state), str(target))


def flatten_state_dict(state: dict) -> dict[str, torch.Tensor]:
    for wrapper in CHECKPOINT_WRAPPERS:
        if isinstance(state.get(wrapper), dict):
            return flatten_state_dict(state[wrapper])
    flat: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": tensor for inner, tensor in flatten_state_dict(value).items()})
        elif isinstance(value, torch.Tensor):
            flat[key] = value.detach().contiguous().clone()  # safetensors refuses tensors that share storage
        else:
            raise WeightsError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor")
    return flat
