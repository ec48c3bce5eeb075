#!/bin/sh
# Install torch, the project and torchattacks into the virtual environment at $VENV (the Dockerfile's build
# stage runs this). Settings, all environment variables:
#   TORCH_VARIANT  cpu (default): torch's CPU wheel (from the CPU index, or the wheelhouse)
#                  cuda: torch from PyPI, whose Linux x86_64 wheels are CUDA builds (gigabytes of nvidia-* wheels)
#   TORCH_VERSION  e.g. 2.13.0
#   TORCH_INDEX_URL  overrides the index torch comes from (e.g. https://download.pytorch.org/whl/cu126)
#   WHEELHOUSE     a folder; if it holds any *.whl, every package comes from it alone (pip --no-index): no network
#   SRC            the project's source folder (pyproject.toml)
#   DRY_RUN=1      print the pip commands instead of running them (tests use this)
set -eu
VENV="${VENV:-/opt/venv}"
TORCH_VARIANT="${TORCH_VARIANT:-cpu}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-}"
WHEELHOUSE="${WHEELHOUSE:-/wheelhouse}"
SRC="${SRC:-/src}"
# torchattacks' metadata asks for torchvision (a CUDA torch) and requests~=2.25, neither of which it imports.
TORCHATTACKS_SPEC="${TORCHATTACKS_SPEC:-torchattacks==3.5.1}"

run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then echo "$*"; else "$@"; fi
}

case "$TORCH_VARIANT" in
  cpu) default_index="https://download.pytorch.org/whl/cpu" ;;
  cuda) default_index="" ;;
  *) echo "install_python_deps: TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 2 ;;
esac
index="${TORCH_INDEX_URL:-$default_index}"

pip="$VENV/bin/pip"
common="--no-cache-dir --disable-pip-version-check"
if ls "$WHEELHOUSE"/*.whl >/dev/null 2>&1; then
  echo "install_python_deps: offline, from the wheelhouse $WHEELHOUSE" >&2
  src="--no-index --find-links $WHEELHOUSE"
  torch_src="$src"
else
  src=""
  if [ -n "$index" ]; then torch_src="--index-url $index"; else torch_src=""; fi
fi

# torch first and alone, so that resolving the project's `torch>=2.2,<3` finds it installed and never fetches
# PyPI's (CUDA) torch for the CPU variant.
# shellcheck disable=SC2086  # word splitting of the option strings is intended
run "$pip" install $common $torch_src "torch==$TORCH_VERSION"
# shellcheck disable=SC2086
run "$pip" install $common $src "$SRC"
# shellcheck disable=SC2086
run "$pip" install $common $src --no-deps "$TORCHATTACKS_SPEC"
# The CPU variant must still hold the CPU torch: fail the build if anything swapped it.
if [ "${DRY_RUN:-0}" != 1 ] && [ "$TORCH_VARIANT" = cpu ]; then
  "$VENV/bin/python" -c "import torch, sys; v = torch.__version__; print('torch', v); sys.exit(0 if torch.version.cuda is None else 'CPU variant got a CUDA torch: ' + v)"
fi
