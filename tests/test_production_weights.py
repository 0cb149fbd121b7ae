"""The production profile offline: ``weights fetch`` (from a fake hub, converting pickles), ``weights verify``
(presence, sha256, loadability), the service refusing missing or corrupt weights, and every production loader
run on tiny checkpoints in the exact production formats and file names."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from insightface.model_zoo.arcface_onnx import ArcFaceONNX
from insightface.model_zoo.inswapper import INSwapper
from insightface.model_zoo.scrfd import SCRFD
from production_weights import fake_hub, hub_downloader, manifest_without_hashes, saved_manifest
from sd_single_file import write_single_file_checkpoint

from serve_app.__main__ import main
from serve_app.app import PortraitConfigError, parse_args
from serve_app.pipeline.models import Models, ModelSettings
from serve_app.pipeline.models.identity_attention import GatedIPAdapterAttnProcessor
from serve_app.pipeline.models.production import ProductionWeights
from serve_app.pipeline.models.weights_folder import verify_loadable
from serve_app.pipeline.models.weights import LOCK_FILE, WeightsError, check_files, fetch, read_lock
from serve_app.in_process import generate
from serve_app.pipeline.portrait import PortraitPipeline
from serve_app.schemas import PortraitOptions
from serve_app.styles.catalog import StyleCatalog


@pytest.fixture(scope="session")
def manifest():
    return manifest_without_hashes()


@pytest.fixture(scope="session")
def manifest_file(tmp_path_factory, manifest) -> Path:
    return saved_manifest(tmp_path_factory.mktemp("manifest"), manifest, "weights.yaml")


@pytest.fixture(scope="session")
def hub(tmp_path_factory, manifest) -> Iterator[Path]:
    with fake_hub(tmp_path_factory.mktemp("hub"), manifest) as folder:  # ≈ 350 MB, mostly the GFPGAN-sized pickle
        yield folder


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory, hub, manifest) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("weights")
    fetch(folder, manifest, hub_downloader(hub))
    yield folder
    shutil.rmtree(folder)


@pytest.fixture()
def scratch_weights(tmp_path, weights_dir) -> Path:
    """A copy to break."""
    return Path(shutil.copytree(weights_dir, tmp_path / "weights"))


def test_fetch_stores_every_manifest_file_and_converts_pickles(weights_dir, manifest):
    stored = sorted(str(p.relative_to(weights_dir)) for p in weights_dir.rglob("*") if p.is_file())
    expected = sorted(f"{name}/{weight.stored}" for name, _, weight in manifest.entries())
    assert stored == sorted([*expected, LOCK_FILE])
    assert "upscaler_x4/RealESRGAN_x4plus.safetensors" in stored
    assert not [path for path in stored if path.endswith((".pth", ".bin"))]
    assert check_files(weights_dir, manifest) == []


def test_fetch_again_downloads_nothing(weights_dir, manifest):
    def no_network(*args):
        raise AssertionError("nothing should be downloaded")

    assert fetch(weights_dir, manifest, no_network) == []


def test_every_production_model_loads(weights_dir, manifest):
    assert verify_loadable(ProductionWeights(weights_dir, manifest)) == []


def test_verify_names_missing_and_corrupt_files(scratch_weights, manifest, manifest_file, capsys):
    (scratch_weights / "face_swapper" / "inswapper_128.onnx").unlink()
    with open(scratch_weights / "upscaler_x2" / "RealESRGAN_x2plus.safetensors", "r+b") as stream:
        stream.seek(200)
        stream.write(b"\x00garbage")
    problems = check_files(scratch_weights, manifest)
    assert problems == [
        f"{scratch_weights}/face_swapper/inswapper_128.onnx: missing",
        f"{scratch_weights}/upscaler_x2/RealESRGAN_x2plus.safetensors: corrupt (sha256 differs from {LOCK_FILE})",
    ]
    assert main(["weights", "verify", "--dir", str(scratch_weights), "--manifest", str(manifest_file)]) == 1
    assert "inswapper_128.onnx: missing" in capsys.readouterr().err


def test_fetch_repairs_what_verify_reports(scratch_weights, manifest, hub):
    (scratch_weights / "face_swapper" / "inswapper_128.onnx").unlink()
    assert fetch(scratch_weights, manifest, hub_downloader(hub)) == ["face_swapper/inswapper_128.onnx"]
    assert check_files(scratch_weights, manifest) == []


def test_fetch_refuses_a_download_whose_sha256_is_not_the_manifests(tmp_path, manifest, hub):
    pinned = manifest.model_copy(deep=True)
    pinned.models["face_swapper"].files[0].sha256 = "0" * 64
    with pytest.raises(WeightsError, match="inswapper_128.onnx.*is not the manifest's 0000"):
        fetch(tmp_path, pinned, hub_downloader(hub))
    assert not (tmp_path / "face_swapper" / "inswapper_128.onnx").exists()


def test_fetch_names_the_file_it_cannot_download(tmp_path, manifest):
    def offline(repo, file, revision, folder):
        raise OSError("network unreachable")

    with pytest.raises(WeightsError, match="stable-diffusion-v1-5/model_index.json@.*cannot download"):
        fetch(tmp_path, manifest, offline)


def test_weights_copied_by_hand_are_not_trusted(scratch_weights, manifest):
    (scratch_weights / LOCK_FILE).unlink()
    problems = check_files(scratch_weights, manifest)
    assert len(problems) == sum(1 for _ in manifest.entries())
    assert all("not in weights.lock.json" in problem for problem in problems)


def test_the_service_refuses_to_start_production_without_usable_weights(scratch_weights, manifest_file, styles_dir):
    args = {"profile": "production", "styles_dir": str(styles_dir), "weights_manifest": str(manifest_file)}
    assert parse_args({**args, "weights_dir": str(scratch_weights)}).profile == "production"
    (scratch_weights / "face_restorer" / "facerestore_models" / "GFPGANv1.4.safetensors").unlink()
    with pytest.raises(PortraitConfigError, match="GFPGANv1.4.safetensors: missing"):
        parse_args({**args, "weights_dir": str(scratch_weights)})
    with pytest.raises(PortraitConfigError, match="needs weights_dir"):
        parse_args(args)


def test_the_lock_records_where_each_file_came_from(weights_dir):
    entry = read_lock(weights_dir)["ip_adapter_faceid/ip-adapter-faceid_sd15.safetensors"]
    assert (
        entry["source"] == "h94/IP-Adapter-FaceID/ip-adapter-faceid_sd15.bin@b75e0747b57dfaab3fe131a7d8c728fdf05a4e6a"
    )


def test_production_loaders_give_the_production_classes(weights_dir, manifest):
    weights = ProductionWeights(weights_dir, manifest)
    assert isinstance(weights.identity_encoder().model, ArcFaceONNX)
    assert isinstance(weights.face_detector(), SCRFD)
    assert isinstance(weights.face_swapper(), INSwapper)
    assert weights.face_parser().model.config.id2label[13] == "hair"
    assert {scale: model.scale for scale, model in weights.upscalers().items()} == {2: 2, 4: 4}
    assert weights.face_restorer().model.architecture.id == "GFPGAN"
    safety = weights.safety_checker()
    assert isinstance(safety.model, StableDiffusionSafetyChecker) and safety.model.dtype == torch.float32
    assert safety.processor.crop_size == {"height": 32, "width": 32}  # the tiny checker's feature_extractor


def test_production_diffusion_has_identity_lora_fused_and_gated_attention(weights_dir, manifest_file):
    models = Models(ModelSettings(profile="production", weights_dir=weights_dir, weights_manifest=manifest_file))
    pipe = models.diffusion
    assert pipe.get_list_adapters() == {}  # FaceID's LoRA lives in the base weights now
    processors = pipe.unet.attn_processors.values()
    assert sum(isinstance(p, GatedIPAdapterAttnProcessor) for p in processors) == len(processors) // 2
    assert pipe.tokenizer("a person").input_ids[0] == pipe.tokenizer.bos_token_id


def test_single_file_base_model_loads_with_the_folders_configs(weights_dir, manifest, monkeypatch):
    """An original-layout checkpoint (as v1-5-pruned-emaonly.safetensors) beside the diffusers configs, offline."""
    reference = ProductionWeights(weights_dir, manifest).diffusion_pipeline()
    single = manifest.model_copy(deep=True)
    base = single.models["base"]
    base.files = [f for f in base.files if not f.file.endswith(".safetensors")]
    base.files.append(base.files[0].model_copy(update={"file": "v1-5-pruned-emaonly.safetensors"}))
    folder = Path(shutil.copytree(weights_dir / "base", weights_dir.parent / "single" / "base"))
    for weights_file in folder.glob("*/*.safetensors"):
        weights_file.unlink()
    write_single_file_checkpoint(reference, folder / "v1-5-pruned-emaonly.safetensors")

    def no_network(self, address):
        raise AssertionError(f"network access to {address!r} during an offline load")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    pipe = ProductionWeights(folder.parent, single).diffusion_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        loaded, expected = getattr(pipe, name).state_dict(), getattr(reference, name).state_dict()
        assert all(torch.equal(loaded[key].float(), expected[key].float()) for key in expected), name


def test_production_profile_generates_portraits(weights_dir, manifest_file, astronaut_png, styles_dir):
    """Every production model in its stage: SCRFD detection (the tiny one fires on the astronaut photo),
    SegFormer parsing, GFPGAN, ArcFace conditioning and ranking, inswapper where a candidate has a face."""
    models = Models(ModelSettings(profile="production", weights_dir=weights_dir, weights_manifest=manifest_file))
    options = PortraitOptions(style="film-noir", num_candidates=2, top_k=1, seed=3, size=64, steps=2, upscale=2)
    run = generate(PortraitPipeline(models), [astronaut_png], StyleCatalog(styles_dir).get("film-noir"), options)
    (portrait,) = run.portraits
    assert portrait.image.shape == (128, 128, 3)
    assert np.ptp(portrait.image) > 0


def test_inswapper_fuses_the_reference_identity_onto_a_detected_face(weights_dir, manifest, astronaut):
    from serve_app.pipeline.faces import DlibFaceAnalyzer
    from serve_app.pipeline.fusion import swap_face

    weights = ProductionWeights(weights_dir, manifest)
    face = DlibFaceAnalyzer().detect(astronaut)[0]
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32)
    swapped = swap_face(weights.face_swapper(), astronaut, face, embedding)
    assert swapped.shape == astronaut.shape and swapped.dtype == np.uint8
    x0, y0, x1, y1 = (int(v) for v in face.box)
    assert np.abs(swapped[y0:y1, x0:x1].astype(int) - astronaut[y0:y1, x0:x1]).mean() > 1  # the face changed
    assert np.array_equal(swapped[-50:, -50:], astronaut[-50:, -50:])  # far from it, nothing did


def test_segformer_parser_gives_image_sized_masks_within_the_head(weights_dir, manifest, astronaut):
    from serve_app.pipeline.faces import DlibFaceAnalyzer

    face = DlibFaceAnalyzer().detect(astronaut)[0]
    parsing = ProductionWeights(weights_dir, manifest).face_parser().parse(astronaut, face)
    for mask in (parsing.face, parsing.skin, parsing.features, parsing.hair):
        assert mask.shape == astronaut.shape[:2] and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
    assert not (parsing.skin * parsing.features).any()
    assert not parsing.face[:, : int(face.box[0] - 0.7 * (face.box[2] - face.box[0]))].any()  # outside the crop


def test_scrfd_detection_gives_faces_with_its_own_keypoints(weights_dir, manifest, astronaut):
    faces = ProductionWeights(weights_dir, manifest).face_analyzer().detect(astronaut)
    # SCRFD's five keypoints, no dlib landmarks: the research-only 68-point predictor is not used in production
    assert faces and all(face.five_points.shape == (5, 2) and face.landmarks is None for face in faces)
    for face in faces:
        x0, y0, x1, y1 = face.box
        margin = x1 - x0
        low, high = (x0 - margin, y0 - margin), (x1 + margin, y1 + margin)
        assert (face.five_points >= low).all() and (face.five_points <= high).all()
    assert [face.area for face in faces] == sorted((face.area for face in faces), reverse=True)
    height, width = astronaut.shape[:2]
    assert all(0 <= f.box[0] < f.box[2] <= width and 0 <= f.box[1] < f.box[3] <= height for f in faces)
