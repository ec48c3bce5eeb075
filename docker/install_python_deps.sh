#!/bin/sh
# Install torch, the project and torchattacks into the virtual environment at $VENV (the Dockerfile's build
# stage runs this), in two steps so that Docker caches the heavy one:
#   install_python_deps deps      torch, then the project's dependencies as pyproject.toml lists them (with
#                                 the extras its [tool.lgm] image-extras names)
#   install_python_deps project   the project itself and torchattacks, both without dependencies
# Settings, all environment variables:
#   TORCH_VARIANT  cpu (default): torch's CPU wheel (from the CPU index, or the wheelhouse)
#                  cuda: torch from PyPI, whose Linux x86_64 wheels are CUDA builds (gigabytes of nvidia-* wheels)
#   TORCH_VERSION  e.g. 2.13.0
#   TORCH_INDEX_URL  overrides the index torch comes from (e.g. https://download.pytorch.org/whl/cu126)
#   WHEELHOUSE     a folder; if it holds any *.whl, every package comes from it alone (pip --no-index): no network;
#                  its python-version (docker/make_wheelhouse.sh writes it) must be the venv's Python, X.Y.Z
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
  # A wheelhouse holds what one exact interpreter needs (environment markers such as
  # python_full_version < "3.11.3" differ between patch releases): docker/make_wheelhouse.sh stamps it.
  made_for="$(cat "$WHEELHOUSE/python-version" 2>/dev/null || true)"
  here="$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')"
  if [ "$made_for" != "$here" ]; then
    echo "install_python_deps: the wheelhouse was made for Python ${made_for:-(no stamp: an older make_wheelhouse.sh)}," \
      "this image runs $here: make it again for this base (WHEELHOUSE_PYTHON_VERSION=$here make wheelhouse)" >&2
    exit 1
  fi
  src="--no-index --find-links $WHEELHOUSE"
  torch_src="$src"
else
  src=""
  if [ -n "$index" ]; then torch_src="--index-url $index"; else torch_src=""; fi
fi

step="${1:-}"
case "$step" in
  deps)
    # torch first and alone, so that the project's `torch>=2.2,<3` finds it installed and pip never fetches
    # PyPI's (CUDA) torch for the CPU variant.
    # shellcheck disable=SC2086  # word splitting of the option strings is intended
    run "$pip" install $common $torch_src "torch==$TORCH_VERSION"
    reqs="$(mktemp)"
    "$VENV/bin/python" - "$SRC/pyproject.toml" >"$reqs" <<'PY'
import sys, tomllib
meta = tomllib.load(open(sys.argv[1], "rb"))
deps = list(meta["project"]["dependencies"])
for extra in meta.get("tool", {}).get("lgm", {}).get("image-extras", []):  # [tool.lgm] image-extras
    deps += meta["project"]["optional-dependencies"][extra]
print("\n".join(d for d in deps if not d.replace(" ", "").startswith("torch")))
PY
    if [ "${DRY_RUN:-0}" = 1 ]; then sed 's/^/  requirement: /' "$reqs"; fi
    # shellcheck disable=SC2086
    run "$pip" install $common $src -r "$reqs"
    rm -f "$reqs"
    ;;
  project)
    # shellcheck disable=SC2086
    run "$pip" install $common $src --no-deps "$SRC"
    # shellcheck disable=SC2086
    run "$pip" install $common $src --no-deps "$TORCHATTACKS_SPEC"
    # Every requirement must be met (but torchattacks' torchvision and requests, on purpose), and torch must
    # be the variant asked for: a CPU wheelhouse (`make wheelhouse`) cannot make the CUDA image, and the CPU
    # image must not have swapped in a CUDA torch.
    if [ "${DRY_RUN:-0}" != 1 ]; then
      problems="$("$pip" check 2>&1 | grep -v -e '^torchattacks ' -e '^No broken requirements' || true)"
      if [ -n "$problems" ]; then echo "$problems" >&2; exit 1; fi
      "$VENV/bin/python" - "$TORCH_VARIANT" <<'PY'
import sys, torch
variant, cuda = sys.argv[1], torch.version.cuda
print("torch", torch.__version__, "CUDA", cuda or "none")
if (variant == "cuda") != (cuda is not None):
    sys.exit(f"install_python_deps: TORCH_VARIANT={variant} but torch {torch.__version__} is built for CUDA {cuda}")
PY
    fi
    ;;
  *) echo "usage: install_python_deps deps|project" >&2; exit 2 ;;
esac
