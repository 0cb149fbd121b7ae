"""``python -m serve_app generate`` end to end on the tiny profile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from PIL import Image

from serve_app.__main__ import main
from serve_app.pipeline.stages import STAGES


def generate(out, *extra: str) -> dict:
    assert main(["--styles-dir", str(REPO / "styles"), "generate", "--out", str(out), *extra]) == 0
    return json.loads((out / "result.json").read_text())


def test_sample_face_end_to_end(tmp_path):
    result = generate(tmp_path, "--style", "xmas-sweater", "--num-candidates", "3", "--top-k", "2", "--seed", "5")
    assert result["style"] == "xmas-sweater@1"
    assert set(result["timings"]) == set(STAGES)
    assert len(result["images"]) == 2
    scores = [image["identity_score"] for image in result["images"]]
    assert scores == sorted(scores, reverse=True)
    assert {image["seed"] for image in result["images"]} <= {5, 6, 7}
    for index in (1, 2):
        with Image.open(tmp_path / f"portrait_{index}.png") as portrait:
            assert portrait.size == (256, 256)  # style size 128, ×2 by default
    assert len(list(tmp_path.glob("layout_mask_*.png"))) == 3


def test_real_photo_requested_size_and_upscale(tmp_path, astronaut_png):
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(astronaut_png)
    out = tmp_path / "out"
    result = generate(
        out, "--image", str(photo), "--style", "film-noir", "--size", "96", "--upscale", "4",
        "--num-candidates", "2", "--top-k", "1", "--seed", "1",
    )
    assert len(result["images"]) == 1
    with Image.open(out / "portrait_1.png") as portrait:
        assert portrait.size == (384, 384)


def test_same_seed_same_output(tmp_path):
    first = generate(tmp_path / "a", "--style", "summer-beach", "--seed", "42", "--num-candidates", "2")
    second = generate(tmp_path / "b", "--style", "summer-beach", "--seed", "42", "--num-candidates", "2")
    assert [i["seed"] for i in first["images"]] == [i["seed"] for i in second["images"]]
    for index in (1, 2):
        assert (tmp_path / "a" / f"portrait_{index}.png").read_bytes() == (
            tmp_path / "b" / f"portrait_{index}.png"
        ).read_bytes()
    third = generate(tmp_path / "c", "--style", "summer-beach", "--seed", "43", "--num-candidates", "2")
    assert (tmp_path / "c" / "portrait_1.png").read_bytes() != (tmp_path / "a" / "portrait_1.png").read_bytes()
    assert third["seed"] == 43


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--style", "no-such-style"], "unknown_style"),
        (["--style", "film-noir", "--num-candidates", "2", "--top-k", "3"], "top_k"),
    ],
)
def test_bad_requests_fail_with_a_clear_message(tmp_path, capsys, arguments, message):
    assert main(["--styles-dir", str(REPO / "styles"), "generate", "--out", str(tmp_path), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_faceless_image_is_a_no_face_error(tmp_path, capsys):
    import skimage.data
    from conftest import png_bytes

    cat = tmp_path / "cat.png"
    cat.write_bytes(png_bytes(skimage.data.chelsea()))
    assert main(["--styles-dir", str(REPO / "styles"), "generate", "--image", str(cat), "--style", "film-noir",
                 "--out", str(tmp_path / "out")]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "no_face"


def test_styles_command_lists_the_demo_styles():
    listing = subprocess.run(
        [sys.executable, "-m", "serve_app", "styles"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for style in ("xmas-sweater@1", "film-noir@1", "summer-beach@1"):
        assert style in listing


def test_three_people_give_three_scores_and_each_persons_mask(tmp_path, group_faces):
    faces = []
    for index, face in enumerate(group_faces):
        faces += ["--image", str(tmp_path / f"person{index}.png")]
        (tmp_path / f"person{index}.png").write_bytes(face)
    out = tmp_path / "out"
    result = generate(out, *faces, "--style", "film-noir", "--size", "256", "--upscale", "1",
                      "--num-candidates", "2", "--top-k", "2", "--seed", "5")
    assert len(result["images"]) == 2
    for image in result["images"]:
        assert len(image["people"]) == 3
        boxes = [person["face_box"] for person in image["people"] if person["face_box"]]
        assert [box[0] for box in boxes] == sorted(box[0] for box in boxes)  # left to right
        assert all(0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 for x0, y0, x1, y1 in boxes)
    for seed in (5, 6):
        assert [path.name for path in sorted(out.glob(f"layout_mask_{seed}*.png"))] == [
            f"layout_mask_{seed}.png", *(f"layout_mask_{seed}_person{i}.png" for i in (1, 2, 3))
        ]
