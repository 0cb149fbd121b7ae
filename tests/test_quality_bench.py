"""``bench/quality.py`` on the tiny profile, small: it runs, and writes what a person reads (the contact sheet, the
λ plot) and what a machine reads (summary.json and the JSON line)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_the_quality_bench_writes_its_report_and_prints_its_figures(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "quality.py"), "--profile", "tiny", "--out", str(tmp_path),
               "--styles", "film-noir", "--seeds", "0", "1", "--steps", "6", "--group"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "summary.json").read_text())
    assert set(printed["methods"]) == {"blend", "blend_fused", "plain_ip_adapter", "no_identity"}
    for figures in printed["methods"].values():
        assert figures["images"] == 2 and 0 <= figures["non_face_similarity_to_reference"] <= 1
        assert figures["prompt_adherence"] is None  # no CLIP model on any profile
    assert printed["locality"]["outside_mask_ratio"] < 0.05
    assert printed["judge"] == {  # the judge is never what conditions
        "identity_similarity": "dlib-resnet-v1", "conditioning": "arcface-w600k_r50", "ranker": "dlib-resnet-v1"
    }
    assert [point["lambda"] for point in printed["lambda_sweep"]] == [0.25, 0.5, 0.75, 1.0]
    # group portraits of 2 and 3 people: per person a row of S, bleed and margin, and the structural locality
    assert [case["people"] for case in printed["group"]] == [
        ["astronaut", "group-photo-1"], ["astronaut", "group-photo-1", "group-photo-3"]
    ]
    for case in printed["group"]:
        people = len(case["people"])
        assert case["portraits"] == 2 and len(case["similarity"]) == people
        assert all(row is None or len(row) == people for row in case["similarity"])
        assert len(case["locality"]) == people
        assert all(person["outside_own_mask_ratio"] < 0.05 for person in case["locality"])
    report = (tmp_path / "report.html").read_text()
    # plot, reference, methods × seeds, masks, λ strip, group portraits
    assert report.count("<img") == 1 + 1 + 4 * 2 + 2 + 4 + 2 * 2
    assert all((tmp_path / name).stat().st_size > 0 for name in ("lambda_sweep.png", "images"))


def test_on_tiny_commercial_the_judge_is_a_face_recognizer_and_the_conditioning_clip(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "quality.py"), "--profile", "tiny-commercial", "--out",
               str(tmp_path), "--styles", "film-noir", "--seeds", "0", "--steps", "4", "--size", "64"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed["judge"] == {
        "identity_similarity": "dlib-resnet-v1",
        "conditioning": "clip-vision-plus-face",
        "ranker": "auraface-v1-tiny-random",
    }
    assert printed["methods"]["blend"]["images"] == 1
