#!/usr/bin/env bash
# Fetches, here, the wheels the GPU machine's image lacks, into .whl/ (git-ignored), so that
# bench/gpu_check.sh can install them there: that machine reaches no package index. Its image
# holds torch, numpy, jaxtyping, tokenizers, safetensors, tqdm, pyyaml and pytest (listed in the
# device tool's KINDS.md) but not pydantic, which every config imports. Versions are the lock's.
#
#   bench/gpu_wheels.sh              # then carry .whl to the device: run(..., carry=[".whl"])
#
# PYTHON (default: python3) is any interpreter with pip; the wheels are for CPython 3.12 on
# x86-64 Linux, the GPU image's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions)
pins=$("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys, tomllib
locked = {p["name"]: p["version"] for p in tomllib.load(open("poetry.lock", "rb"))["package"]}
print(" ".join(f"{name}=={locked[name]}" for name in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086  # one argument per pin
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $pins
ls .whl
