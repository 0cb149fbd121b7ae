"""The commercial profile offline, from a weights folder: ``python -m serve_app weights fetch --profile commercial``
from a fake Hugging Face Hub (tiny files in the exact formats and names of h94's Plus-face adapter and image
encoder, fal's AuraFace ``glintr100.onnx``, SD1.5 and Real-ESRGAN), ``weights verify``, every commercial loader,
a portrait generated in process, and the refusals: a corrupt file, a model not cleared for commercial use."""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import yaml
from PIL import Image
from production_weights import fake_hf_hub_download, fake_hub, manifest_without_hashes, saved_manifest

from serve_app.__main__ import main
from serve_app.in_process import generate
from serve_app.pipeline.identity import ClipFaceEncoder
from serve_app.pipeline.mediapipe_faces import MediaPipeFaceAnalyzer
from serve_app.pipeline.models import Models, ModelSettings, tiny
from serve_app.pipeline.models.commercial import AURAFACE, CommercialWeights
from serve_app.pipeline.models.weights import COMMERCIAL_MANIFEST, LOCK_FILE, WeightsManifest, check_files
from serve_app.pipeline.portrait import PortraitPipeline
from serve_app.pipeline.recognition import OnnxFaceRecognizer
from serve_app.pipeline.safety import OpenNsfwChecker
from serve_app.schemas import PortraitImage, PortraitOptions
from serve_app.styles.catalog import StyleCatalog

PACKAGED = {"face_detector", "face_landmarker", "person_segmenter", "nsfw_checker"}
REPO_FILES = 18  # base 12, Plus-face 1, image encoder 2, AuraFace 1, Real-ESRGAN x2 and x4


@dataclass(frozen=True)
class CliRun:
    code: int
    out: str
    err: str


def run_cli(argv: list[str]) -> CliRun:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return CliRun(code, out.getvalue(), err.getvalue())


def weights_command(action: str, folder: Path, manifest_file: Path) -> list[str]:
    return ["weights", action, "--profile", "commercial", "--dir", str(folder), "--manifest", str(manifest_file)]


@pytest.fixture(scope="module")
def manifest() -> WeightsManifest:
    return manifest_without_hashes(COMMERCIAL_MANIFEST)


@pytest.fixture(scope="module")
def manifest_file(tmp_path_factory, manifest) -> Path:
    return saved_manifest(tmp_path_factory.mktemp("commercial-manifest"), manifest, "weights-commercial.yaml")


@pytest.fixture(scope="module")
def hub(tmp_path_factory, manifest) -> Iterator[Path]:
    with fake_hub(tmp_path_factory.mktemp("commercial-hub"), manifest) as folder:  # no GFPGAN: no face_restorer
        yield folder


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, hub, manifest_file) -> Iterator[tuple[Path, CliRun, list[str]]]:
    """``weights fetch --profile commercial`` into a fresh folder, huggingface_hub's download reading the fake hub:
    the folder, what the command said, and what it downloaded."""
    folder = tmp_path_factory.mktemp("commercial-weights") / "weights"
    download = fake_hf_hub_download(hub)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub, "hf_hub_download", download)
        run = run_cli(weights_command("fetch", folder, manifest_file))
    yield folder, run, download.calls
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def weights_dir(fetched) -> Path:
    folder, run, _ = fetched
    assert run.code == 0, run.err
    return folder


@pytest.fixture(scope="module")
def weights(weights_dir, manifest) -> CommercialWeights:
    return CommercialWeights(weights_dir, manifest)


@pytest.fixture(scope="module")
def face_photo(sample_face) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample_face)).convert("RGB"))


def test_fetch_stores_only_the_repo_files_converts_pickles_and_verify_loads_every_model(
    fetched, manifest, manifest_file
):
    folder, run, downloads = fetched
    assert run.code == 0, run.err
    stored = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    expected = sorted(f"{name}/{weight.stored}" for name, _, weight in manifest.entries())
    assert len(expected) == REPO_FILES and stored == sorted([*expected, LOCK_FILE])
    assert not PACKAGED & {path.split("/")[0] for path in stored}  # the MediaPipe and Open-NSFW files stay put
    assert not [path for path in stored if path.endswith((".pth", ".bin", ".tflite"))]
    assert {"upscaler_x2/RealESRGAN_x2plus.safetensors", "upscaler_x4/RealESRGAN_x4plus.safetensors"} <= set(stored)
    assert "face_recognizer/glintr100.onnx" in stored
    assert "image_encoder/models/image_encoder/model.safetensors" in stored
    assert len(downloads) == REPO_FILES
    assert "h94/IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors@main" in downloads
    assert f"{folder}: stored {REPO_FILES} file(s)" in run.out
    usable = f"{REPO_FILES} files intact, {len(manifest.models)} models usable"
    assert usable in run.out  # fetch loads every model too

    verify = run_cli(weights_command("verify", folder, manifest_file))
    assert verify.code == 0, verify.err
    assert verify.out.strip() == f"{folder}: {usable}" and "error:" not in verify.err
    assert check_files(folder, manifest) == []


def test_commercial_loaders_give_the_commercial_classes(weights, face_photo):
    analyzer = weights.face_analyzer()
    assert isinstance(analyzer, MediaPipeFaceAnalyzer)
    face = analyzer.detect(face_photo)[0]
    encoder = weights.identity_encoder()
    assert isinstance(encoder, ClipFaceEncoder)
    tokens = (tiny.CLIP_VISION["image_size"] // tiny.CLIP_VISION["patch_size"]) ** 2 + 1
    assert encoder.describe(face_photo, face).shape == (tokens, tiny.CLIP_VISION["hidden_size"])
    recognizer = weights.recognizer(None)
    assert isinstance(recognizer, OnnxFaceRecognizer) and recognizer.name == AURAFACE == "auraface-v1"
    embedding = recognizer.describe(face_photo, face)
    assert embedding.shape == (512,) and np.isclose(np.linalg.norm(embedding), 1, atol=1e-4)
    state = weights.ip_adapter_state(None)
    assert set(state) == {"image_proj", "ip_adapter"}
    assert state["image_proj"]["latents"].shape == (1, tiny.RESAMPLER_QUERIES, tiny.RESAMPLER_HIDDEN)
    assert isinstance(weights.safety_checker(), OpenNsfwChecker)
    assert weights.face_swapper() is None
    assert {scale: model.scale for scale, model in weights.upscalers().items()} == {2: 2, 4: 4}


def test_commercial_profile_generates_portraits_judged_by_auraface(weights_dir, manifest_file, sample_face, styles_dir):
    models = Models(ModelSettings(profile="commercial", weights_dir=weights_dir, weights_manifest=manifest_file))
    projection = models.diffusion.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"  # the Resampler, from the fetched file
    options = PortraitOptions(style="film-noir", num_candidates=2, top_k=1, seed=3, size=64, steps=2, upscale=2)
    run = generate(PortraitPipeline(models), [sample_face], StyleCatalog(styles_dir).get("film-noir"), options)
    (portrait,) = run.portraits
    assert portrait.image.shape == (128, 128, 3) and np.ptp(portrait.image) > 0
    images = [PortraitImage.of(portrait) for portrait in run.portraits]
    assert [image.identity_judge for image in images] == ["auraface-v1"]


def test_verify_names_a_corrupt_fetched_file(tmp_path, weights_dir, manifest_file):
    folder = Path(shutil.copytree(weights_dir, tmp_path / "weights"))
    recognizer = folder / "face_recognizer" / "glintr100.onnx"
    with open(recognizer, "r+b") as stream:
        stream.seek(100)
        original = stream.read(8)
        stream.seek(100)
        stream.write(bytes(b ^ 0xFF for b in original))
    run = run_cli(weights_command("verify", folder, manifest_file))
    assert run.code == 1
    assert run.err.strip() == f"error: {recognizer}: corrupt (sha256 differs from {LOCK_FILE})"
    assert "models usable" not in run.out


def test_a_model_not_cleared_is_neither_verified_nor_fetched(tmp_path, weights_dir, manifest, hub, monkeypatch):
    data = manifest.model_dump()
    data["models"]["face_recognizer"].update(commercial_use=False, licence="insightface, non-commercial")
    not_cleared = tmp_path / "weights-commercial.yaml"
    not_cleared.write_text(yaml.safe_dump(data))

    verify = run_cli(weights_command("verify", weights_dir, not_cleared))
    assert verify.code == 2 and verify.out == ""
    assert "not cleared: face_recognizer (insightface, non-commercial)" in verify.err

    download = fake_hf_hub_download(hub)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    target = tmp_path / "weights"
    fetch = run_cli(weights_command("fetch", target, not_cleared))
    assert fetch.code == 2 and "not cleared: face_recognizer" in fetch.err
    assert download.calls == [] and not target.exists()
