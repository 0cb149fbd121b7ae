"""``bench/gpu.py``, the benchmark that waits for a lent GPU, run here as its smoke test (the tiny profile on the
CPU, 64 px, 2 steps, both phases): it runs to the end and counts the UNet work each method really does. And the
GPU kit's pins are the project's."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = 4


@pytest.fixture(scope="module")
def result() -> dict:
    command = [sys.executable, str(REPO / "bench" / "gpu.py"), "--device", "cpu", "--profile", "tiny", "--steps", "2",
               "--size", "64", "--candidates", str(CANDIDATES)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(finished.stdout.splitlines()[-1])


def test_each_method_makes_the_unet_calls_its_algorithm_says(result):
    """2 steps at t1 = 0.35: one prompt-only layout step and the x̂0 estimate (CFG: 2N rows each), then one blend
    step — both branches in one call (4N rows) for the blend, one call per branch for the naive blend; plain
    IP-Adapter: two steps of 2N rows."""
    rows = 2 * CANDIDATES
    expected = {"blend": (3, 4 * rows), "naive_blend": (4, 4 * rows), "plain_ip_adapter": (2, 2 * rows)}
    for phase in ("uncompiled", "compiled"):
        methods = result[phase]["methods"]
        assert {m: (methods[m]["unet_calls"], methods[m]["unet_rows"]) for m in methods} == expected


def test_every_stage_is_timed_in_both_phases_and_compared(result):
    stages = {"blend": {"layout", "blend", "safety", "upscale"}, "plain_ip_adapter": {"sample"},
              "naive_blend": {"layout", "blend"}}
    for phase in ("uncompiled", "compiled"):
        methods = result[phase]["methods"]
        assert {method: set(report["stage_ms"]) for method, report in methods.items()} == stages
        assert all(figures["p50"] > 0 for report in methods.values() for figures in report["stage_ms"].values())
    ratios = result["ratios"]
    assert set(ratios["compiled_over_uncompiled"]) == set(stages)
    assert all(ratios[phase]["blend_over_plain_ip_adapter"] > 0 for phase in ("uncompiled", "compiled"))
    assert result["stands_in"] and result["not_measured"]  # the figures say what they leave out


def test_the_gpu_kit_pins_the_projects_versions():
    """bench/gpu_kit.sh takes the direct pins from pyproject.toml; its own pins are pydantic's dependencies at
    versions the pinned pydantic accepts."""
    kit = (REPO / "bench" / "gpu_kit.sh").read_text()
    pins = dict(pin.split("==") for pin in re.search(r'^transitive="([^"]+)"', kit, re.MULTILINE).group(1).split())
    needed = [Requirement(line) for line in requires("pydantic") if "extra ==" not in line]
    assert set(pins) == {requirement.name for requirement in needed}
    assert all(requirement.specifier.contains(pins[requirement.name]) for requirement in needed)
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("diffusers", "pydantic", "spandrel", "insightface", "dlib-bin"):
        assert any(requirement.startswith(f"{name}==") for requirement in dependencies), name
