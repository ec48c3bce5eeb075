#!/usr/bin/env bash
# Collect every wheel the image needs into a folder (default wheelhouse/), for an offline image build:
#   docker build -f docker/Dockerfile --build-arg WHEELHOUSE=wheelhouse ...   (then pip runs with --no-index)
# Wheels are for the image's interpreter and platform (CPython docker/python-version, Debian bookworm's 3.11.2;
# Linux x86_64, glibc 2.36), whatever machine runs this, environment markers included: pip evaluates markers
# against the Python that runs it, not the --python-version it is given (that one only picks wheel tags and
# checks Requires-Python), so after pip's own resolution docker/wheelhouse_closure.py walks the wheels'
# requirements with the image's markers and names what is missing (e.g. redis's
# `async-timeout; python_full_version < "3.11.3"` when this runs on 3.11.7), which is downloaded in turn, until
# nothing is. The folder is stamped with that version (DEST/python-version); docker/install_python_deps.sh
# refuses a wheelhouse stamped for another interpreter. The CPU torch wheel is copied from TORCH_WHEEL_DIR when
# it lies there (this project's machines keep it in /opt/wheels), else downloaded from PyTorch's CPU index.
#   docker/make_wheelhouse.sh [DEST]   env: PYTHON, TORCH_VERSION, TORCH_WHEEL_DIR, TORCHATTACKS_SPEC,
#                                      WHEELHOUSE_PYTHON_VERSION (X.Y.Z, default: docker/python-version; for
#                                      another base image, the `python3 --version` it ships)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-wheelhouse}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_WHEEL_DIR="${TORCH_WHEEL_DIR:-/opt/wheels}"
TORCHATTACKS_SPEC="${TORCHATTACKS_SPEC:-torchattacks==3.5.1}"
closure=("$PYTHON" docker/wheelhouse_closure.py)
PY_VERSION="${WHEELHOUSE_PYTHON_VERSION:-$("${closure[@]}" python-version)}"
[[ "$PY_VERSION" =~ ^3\.([0-9]+)\.[0-9]+$ ]] || { echo "make_wheelhouse: Python version '$PY_VERSION' is not 3.Y.Z" >&2; exit 2; }
ABI="cp3${BASH_REMATCH[1]}"
# The full X.Y.Z: Requires-Python is checked against the image's exact version, not X.Y.0.
PLATFORM=(--only-binary=:all: --implementation cp --python-version "$PY_VERSION" --abi "$ABI"
          --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform linux_x86_64)
mkdir -p "$DEST"
rm -f "$DEST/python-version"  # stamped again only once complete
echo "wheelhouse: for CPython $PY_VERSION ($ABI) on Linux x86_64 (pip runs on $("$PYTHON" -c 'import platform; print(platform.python_version())'))"

torch_wheel="$(ls "$TORCH_WHEEL_DIR"/torch-"$TORCH_VERSION"+cpu-"$ABI"-*x86_64.whl 2>/dev/null | head -n1 || true)"
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
"${closure[@]}" requirements "$TORCH_VERSION" >"$reqs"
"$PYTHON" -m pip download -q -d "$DEST" "${PLATFORM[@]}" --find-links "$DEST" -r "$reqs"
# What the image's markers add to pip's resolution (each round's downloads bring requirements of their own).
for round in 1 2 3 4 5 6; do
  "${closure[@]}" missing "$DEST" "$PY_VERSION" "$TORCH_VERSION" >"$reqs"
  [ -s "$reqs" ] || break
  [ "$round" -lt 6 ] || { echo "make_wheelhouse: still missing after $((round - 1)) rounds" >&2; exit 1; }
  "$PYTHON" -m pip download -q -d "$DEST" "${PLATFORM[@]}" --find-links "$DEST" -r "$reqs"
done
# torchattacks is installed with --no-deps (its metadata pulls torchvision and a CUDA torch).
"$PYTHON" -m pip download -q --no-deps -d "$DEST" "${PLATFORM[@]}" "$TORCHATTACKS_SPEC"
echo "$PY_VERSION" >"$DEST/python-version"
echo "wheelhouse: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST, for Python $PY_VERSION"
