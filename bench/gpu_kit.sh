#!/usr/bin/env bash
# bash bench/gpu_kit.sh DIR — the wheels that the GPU machine's image lacks for bench/gpu.py, into DIR.
#
# That image has Python 3.12 with torch, transformers, peft, accelerate, safetensors, huggingface_hub, numpy,
# Pillow, OpenCV, scikit-image, scipy, onnx, onnxruntime, einops, fsspec, pyyaml and httpx, and no network. The kit
# is what bench/gpu.py imports beyond those: diffusers, pydantic, spandrel, insightface and dlib, at the versions
# pyproject.toml pins, and pydantic's own dependencies at the versions installed with it here. Wheels only
# (cp312, manylinux, x86-64), without dependencies; at most 60 MiB together (about 15). dlib's model data
# (face_recognition_models, 100 MB) does not fit: bench/gpu.py says what stands in for it.
#
# On the GPU machine, from the repository root with DIR carried:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site:. python3 bench/gpu.py
set -euo pipefail
dir=${1:?usage: bash bench/gpu_kit.sh DIR}
cd "$(dirname "$0")/.."

# The project's pins, read from pyproject.toml: one source of truth.
pinned=$(python3 - <<'EOF'
import re, tomllib
wanted = {"diffusers", "pydantic", "spandrel", "insightface", "dlib-bin"}
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.split(r"[\[=<>! ]", requirement, maxsplit=1)[0]
    if name in wanted:
        wanted.remove(name)
        print(requirement)
if wanted:
    raise SystemExit(f"pyproject.toml pins none of: {sorted(wanted)}")
EOF
)
# pydantic's dependencies, at versions tested together here (tests/test_gpu_bench.py checks pydantic accepts them).
transitive="pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0"

mkdir -p "$dir"
rm -f "$dir"/*.whl  # one version of each: two would stop the install there
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34; do
    platforms+=(--platform "${tag}_x86_64")
done
# shellcheck disable=SC2086  # the requirement lists split on whitespace
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$dir" $pinned $transitive

bytes=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
ls -1 "$dir"/*.whl
echo "$(ls "$dir"/*.whl | wc -l) wheels, $((bytes / 1024 / 1024)) MiB in $dir"
if ((bytes > 60 * 1024 * 1024)); then
    echo "the kit is over 60 MiB" >&2
    exit 1
fi
