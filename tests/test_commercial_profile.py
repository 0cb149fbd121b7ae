"""The commercial profiles without Ray: the manifest (every model cleared, every packaged file the one pinned), the
refusal to start with a model not cleared or a packaged file changed, the processes that never import insightface
nor touch a non-cleared model's files, and tiny-commercial end to end through the CLI with the real MediaPipe
models (Plus-face identity from a CLIP tower, AuraFace-signature ranking, Open-NSFW)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO
from PIL import Image

from serve_app.__main__ import main
from serve_app.app import PortraitConfigError, parse_args
from serve_app.pipeline.identity import ClipFaceEncoder
from serve_app.pipeline.mediapipe_faces import MediaPipeFaceAnalyzer
from serve_app.pipeline.models import Models
from serve_app.pipeline.models.weights import COMMERCIAL_MANIFEST, WeightsError, load_manifest
from serve_app.pipeline.parsing import MeshFaceParser
from serve_app.pipeline.recognition import OnnxFaceRecognizer
from serve_app.pipeline.restoration import ClassicalFaceRestorer
from serve_app.pipeline.safety import OpenNsfwChecker
from serve_app.pipeline.settings import ModelSettings

# The models of configs/weights.yaml not cleared for commercial use: what the commercial profile replaces.
NOT_CLEARED_IN_PRODUCTION = {"ip_adapter_faceid", "face_detector", "face_recognizer", "face_swapper", "face_parser"}


def commercial_manifest() -> dict:
    return yaml.safe_load(COMMERCIAL_MANIFEST.read_text())


def write_manifest(tmp_path: Path, manifest: dict) -> Path:
    path = tmp_path / "weights-commercial.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_every_commercial_model_is_cleared_with_its_licence_and_source():
    manifest = load_manifest(COMMERCIAL_MANIFEST)
    assert manifest.not_cleared() == []
    assert manifest.packaged_problems() == []  # the vendored MediaPipe files and Open-NSFW's are the pinned ones
    for name, model in manifest.models.items():
        assert model.licence and (model.repo or model.package), name
    assert not {"ip_adapter_faceid", "face_swapper", "face_parser", "face_restorer"} & set(manifest.models)
    production = load_manifest()
    assert {line.split(" ")[0] for line in production.not_cleared()} == NOT_CLEARED_IN_PRODUCTION


@pytest.mark.parametrize("profile", ["tiny-commercial", "commercial"])
def test_a_model_not_cleared_stops_the_commercial_profiles_from_starting(tmp_path, profile):
    manifest = commercial_manifest()
    manifest["models"]["face_recognizer"].update(commercial_use=False, licence="insightface, non-commercial")
    path = write_manifest(tmp_path, manifest)
    args = {"profile": profile, "styles_dir": str(REPO / "styles"), "weights_manifest": str(path)}
    if profile == "commercial":
        args["weights_dir"] = str(tmp_path)
    with pytest.raises(PortraitConfigError, match=r"not cleared: face_recognizer \(insightface, non-commercial\)"):
        parse_args(args)  # serve run / build_app
    settings = ModelSettings(**{key: value for key, value in args.items() if key != "styles_dir"})
    with pytest.raises(WeightsError, match="not cleared: face_recognizer"):
        Models(settings).faces  # a replica starting without the builder's check


def test_the_cli_refuses_a_manifest_with_a_model_not_cleared(tmp_path, capsys):
    manifest = commercial_manifest()
    manifest["models"]["nsfw_checker"]["commercial_use"] = False
    path = write_manifest(tmp_path, manifest)
    argv = ["generate", "--style", "film-noir", "--out", str(tmp_path / "out"), "--profile", "tiny-commercial"]
    assert main([*argv, "--manifest", str(path)]) == 2
    assert "not cleared: nsfw_checker" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_changed_packaged_model_file_is_refused(tmp_path):
    manifest = commercial_manifest()
    manifest["models"]["face_landmarker"]["files"][0]["sha256"] = "0" * 64
    path = write_manifest(tmp_path, manifest)
    with pytest.raises(PortraitConfigError, match="face_landmark.tflite: its sha256 is not the manifest's"):
        parse_args({"profile": "tiny-commercial", "styles_dir": str(REPO / "styles"), "weights_manifest": str(path)})


def test_tiny_commercial_builds_the_commercial_models(commercial_models):
    assert isinstance(commercial_models.faces, MediaPipeFaceAnalyzer)
    assert isinstance(commercial_models.face_parser, MeshFaceParser)
    assert isinstance(commercial_models.identity_encoder, ClipFaceEncoder)
    assert isinstance(commercial_models.recognizer, OnnxFaceRecognizer)
    assert commercial_models.recognizer.name == "auraface-v1-tiny-random"
    assert isinstance(commercial_models.face_restorer, ClassicalFaceRestorer)
    assert isinstance(commercial_models.safety_checker, OpenNsfwChecker)
    assert commercial_models.face_swapper is None
    projection = commercial_models.diffusion.unet.encoder_hid_proj.image_projection_layers[0]
    assert type(projection).__name__ == "IPAdapterPlusImageProjection"  # the Resampler, read from "latents"


def embed(models: Models, image: np.ndarray) -> np.ndarray:
    return models.identity_encoder.describe(image, models.faces.detect(image)[0])


def test_plus_face_identity_is_the_clip_towers_hidden_states_of_the_aligned_face(commercial_models, astronaut, sample_face):
    encoder = commercial_models.identity_encoder
    embedding = embed(commercial_models, astronaut)
    tokens = (224 // 32) ** 2 + 1  # the tiny tower's patches and class token
    assert embedding.shape == encoder.negative.shape == (tokens, 32)
    # aligned on the face: the same face moved in the frame encodes far closer than another face does
    moved = embed(commercial_models, np.ascontiguousarray(np.pad(astronaut, ((0, 0), (60, 0), (0, 0)), mode="edge")))
    other = embed(commercial_models, np.asarray(Image.open(io.BytesIO(sample_face)).convert("RGB")))
    assert np.linalg.norm(moved - embedding) < 0.5 * np.linalg.norm(other - embedding)
    assert np.linalg.norm(encoder.negative - embedding) > np.linalg.norm(moved - embedding)


def test_open_nsfw_passes_real_faces(commercial_models, astronaut, sample_face):
    checker = commercial_models.safety_checker
    faces = [astronaut, np.asarray(Image.open(io.BytesIO(sample_face)).convert("RGB"))]
    scores = checker.scores(faces)
    assert scores.shape == (2,) and (scores < 0.2).all()  # Yahoo's "safe" band
    assert checker.flags(faces) == [False, False] and checker.flags([]) == []


NO_INSIGHTFACE = """
import json, sys
BLOCKED = ("insightface", "face_recognition_models")  # the non-cleared models' code and dlib's model files


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not cleared for commercial use")


sys.meta_path.insert(0, Blocker())
opened = []
sys.addaudithook(lambda event, args: event == "open" and opened.append(str(args[0])))
import deployments.blend_sampler, deployments.fusion_ranker, deployments.layout_generator  # noqa: E401
import deployments.preprocessor, deployments.upscaler, serve_app.app  # noqa: E401
from serve_app.__main__ import main

code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED),
                  "opened": opened}))
"""


def test_tiny_commercial_never_imports_insightface_nor_opens_a_non_cleared_file(tmp_path):
    """The whole pipeline and every deployment module, in a process where importing insightface, or finding the
    package that holds dlib's model files, raises."""
    argv = ["--styles-dir", str(REPO / "styles"), "generate", "--style", "film-noir", "--profile", "tiny-commercial",
            "--out", str(tmp_path), "--num-candidates", "2", "--top-k", "1", "--seed", "3"]
    run = subprocess.run([sys.executable, "-c", NO_INSIGHTFACE, *argv], capture_output=True, text=True, cwd=REPO,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["modules"] == []
    package_files = [path for path in report["opened"] if "/insightface/" in path or "/face_recognition_models/" in path]
    assert package_files == []  # (distributions' metadata, which importlib.metadata scans, is not in there)
    assert json.loads((tmp_path / "result.json").read_text())["images"][0]["identity_judge"] == "auraface-v1-tiny-random"


def test_tiny_commercial_end_to_end_through_the_cli(tmp_path, astronaut_png):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)
    out = tmp_path / "out"
    argv = ["--styles-dir", str(REPO / "styles"), "generate", "--image", str(photo), "--style", "xmas-sweater",
            "--profile", "tiny-commercial", "--out", str(out), "--num-candidates", "3", "--top-k", "2", "--seed", "7"]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["style"] == "xmas-sweater@1" and len(result["images"]) == 2
    assert {image["identity_judge"] for image in result["images"]} == {"auraface-v1-tiny-random"}
    with Image.open(out / "portrait_1.png") as portrait:
        assert portrait.size == (256, 256)
