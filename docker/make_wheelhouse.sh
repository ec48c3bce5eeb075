#!/usr/bin/env bash
# Collect every wheel the image needs into a folder (default wheelhouse/), for an offline image build:
#   docker build -f docker/Dockerfile --build-arg WHEELHOUSE=wheelhouse ...   (then pip runs with --no-index)
# Wheels are for the image's platform (CPython 3.11, Linux x86_64, glibc 2.36 of Debian bookworm), whatever
# machine runs this. The CPU torch wheel is copied from TORCH_WHEEL_DIR when it lies there (this project's
# machines keep it in /opt/wheels), else downloaded from PyTorch's CPU index.
#   docker/make_wheelhouse.sh [DEST]        env: PYTHON, TORCH_VERSION, TORCH_WHEEL_DIR, TORCHATTACKS_SPEC
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-wheelhouse}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
TORCHATTACKS_SPEC="${TORCHATTACKS_SPEC:-torchattacks==3.5.1}"
PLATFORM=(--only-binary=:all: --implementation cp --python-version 3.11 --abi cp311
          --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform linux_x86_64)
mkdir -p "$DEST"

torch_wheel="$(ls "$TORCH_WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-cp311-*x86_64.whl 2>/dev/null | head -n1 || true)"
if [ -n "$torch_wheel" ]; then
  echo "wheelhouse: torch from $torch_wheel"
  cp -u "$torch_wheel" "$DEST/"
else
  echo "wheelhouse: torch $TORCH_VERSION+cpu from https://download.pytorch.org/whl/cpu"
  "$PYTHON" -m pip download -q --no-deps -d "$DEST" "${PLATFORM[@]}" \
    --index-url https://download.pytorch.org/whl/cpu "torch==$TORCH_VERSION+cpu"
fi

# The project's dependencies as pyproject.toml lists them, plus what installing the project needs
# (setuptools, wheel: the build backend) and torch's own dependencies; torch itself resolves to the CPU wheel.
reqs="$(mktemp)"
trap 'rm -f "$reqs"' EXIT
"$PYTHON" - "$TORCH_VERSION" >"$reqs" <<'PY'
import sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))
build = project["build-system"]["requires"]
deps = [d for d in project["project"]["dependencies"] if not d.replace(" ", "").startswith("torch")]
print("\n".join([f"torch=={sys.argv[1]}+cpu", *build, "wheel", *deps]))
PY
"$PYTHON" -m pip download -q -d "$DEST" "${PLATFORM[@]}" --find-links "$DEST" -r "$reqs"
# torchattacks is installed with --no-deps (its metadata pulls torchvision and a CUDA torch).
"$PYTHON" -m pip download -q --no-deps -d "$DEST" "${PLATFORM[@]}" "$TORCHATTACKS_SPEC"
echo "wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
