"""The offline wheelhouse holds what the API image's own interpreter needs, environment markers included.

The image runs Debian bookworm's python3 (``docker/python-version``: 3.11.2); the wheelhouse is made on a host
whose Python may differ (3.11.7 here). ``pip download --python-version`` evaluates markers against the host, so
redis's ``async-timeout>=4.0.3; python_full_version < "3.11.3"`` was left out and the offline build failed. These
tests need no Docker and no network: markers are evaluated with ``packaging`` against the image's environment,
over the metadata of the distributions installed here (importlib.metadata), and ``docker/make_wheelhouse.sh``
runs with a stand-in for ``pip download`` that resolves as pip does (markers for the host) from that metadata.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import Marker, default_environment
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
TORCH_VERSION = "2.13.0"
# The reported failure: the wheelhouse was made with Python 3.11.7, the image runs 3.11.2.
HOST_PYTHON = "3.11.7"


def load_closure():
    """docker/wheelhouse_closure.py as a module (a script of docker/, not a package of the project)."""
    if "wheelhouse_closure" not in sys.modules:
        spec = importlib.util.spec_from_file_location("wheelhouse_closure", DOCKER / "wheelhouse_closure.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["wheelhouse_closure"] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules["wheelhouse_closure"]


def installed_dists() -> list:
    """Every distribution installed here, as the closure walks them: Requires-Dist with its markers."""
    wc = load_closure()
    out = {}
    for d in importlib.metadata.distributions():
        try:
            name, version = canonicalize_name(d.metadata["Name"]), Version(d.version)
        except (InvalidVersion, TypeError):
            continue
        out.setdefault(name, wc.Dist(name, version, tuple(d.requires or ()), d.metadata["Requires-Python"]))
    return list(out.values())


@pytest.fixture(scope="module")
def image_python() -> str:
    return load_closure().image_python_version()


# ---- one fact: the image's Python --------------------------------------------------------------------------


def test_the_images_python_is_one_exact_version_that_every_script_reads(image_python):
    assert re.fullmatch(r"3\.\d+\.\d+", image_python)
    major_minor = image_python.rsplit(".", 1)[0]
    # The Dockerfile's default base is that Python's X.Y on the same Debian release as the debootstrap base.
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    assert base == f"python:{major_minor}-slim-bookworm"
    assert "DEBIAN_SUITE:-bookworm" in (DOCKER / "make_base_image.sh").read_text()
    # The debootstrap base checks its python3 against the file; the wheelhouse script takes it from there.
    assert '"$(dirname "$0")/python-version"' in (DOCKER / "make_base_image.sh").read_text()
    wheelhouse = (DOCKER / "make_wheelhouse.sh").read_text()
    assert "python-version)}" in wheelhouse and '--python-version "$PY_VERSION"' in wheelhouse
    assert re.search(r'missing "\$DEST" "\$PY_VERSION"', wheelhouse)
    # The smoke resolves for the base image's own python3 and remakes a wheelhouse stamped for another.
    smoke = (DOCKER / "smoke.sh").read_text()
    assert 'WHEELHOUSE_PYTHON_VERSION="$pyv"' in smoke and "wheelhouse/python-version" in smoke


# ---- markers evaluated for the image -----------------------------------------------------------------------


def test_the_target_environment_has_every_marker_variable_and_the_images_values(image_python):
    env = load_closure().target_environment(image_python)
    assert set(env) == set(default_environment())
    assert env["python_full_version"] == image_python and env["sys_platform"] == "linux"
    if sys.platform == "linux" and platform.machine() == "x86_64" and sys.implementation.name == "cpython":
        here = load_closure().target_environment(platform.python_version())
        real = default_environment()
        for key in set(real) - {"platform_release", "platform_version"}:
            assert here[key] == real[key], key


def test_redis_marker_is_true_for_the_images_python_and_false_for_the_hosts(image_python):
    wc = load_closure()
    marker = Marker('python_full_version < "3.11.3"')
    assert marker.evaluate(wc.target_environment(image_python))
    assert not marker.evaluate(wc.target_environment(HOST_PYTHON))


def test_the_images_dependency_graph_evaluated_for_its_python_includes_async_timeout(image_python):
    """Every requirement of the image, transitive ones included, with markers for the image's interpreter."""
    wc = load_closure()
    dists = installed_dists()
    roots = wc.image_requirements(TORCH_VERSION)
    needs = wc.closure(roots, dists, wc.target_environment(image_python))
    assert "redis" in needs.specifiers and "async-timeout" in needs.specifiers
    assert any(asker.startswith("redis ") for asker in needs.by["async-timeout"])
    assert needs.specifiers["async-timeout"].contains("4.0.3")
    # What pip on the host resolves: the markers the host's Python makes true leave async-timeout out.
    host = wc.closure(roots, dists, wc.target_environment(HOST_PYTHON))
    assert "async-timeout" not in host.specifiers
    # So the rule must add it: fake wheels of exactly the host's resolution lack it for the image's Python.
    host_set = [d for d in dists if d.name in host.specifiers]
    gaps = wc.missing(roots, host_set, image_python)
    assert "async-timeout>=4.0.3" in gaps and gaps["async-timeout>=4.0.3"][0].startswith("redis ")


def test_missing_checks_version_and_requires_python(image_python, tmp_path):
    wc = load_closure()
    write_wheel(tmp_path, "redis", "8.2.0", ['async-timeout>=4.0.3; python_full_version < "3.11.3"'])
    write_wheel(tmp_path, "async-timeout", "4.0.2")
    dists = wc.wheel_dists(tmp_path)
    assert list(wc.missing(["redis>=5"], dists, image_python)) == ["async-timeout>=4.0.3"]
    write_wheel(tmp_path, "async-timeout", "5.0.1", requires_python=">=3.12")
    assert list(wc.missing(["redis>=5"], wc.wheel_dists(tmp_path), image_python)) == ["async-timeout>=4.0.3"]
    write_wheel(tmp_path, "async-timeout", "5.0.0", requires_python=">=3.8")
    assert wc.missing(["redis>=5"], wc.wheel_dists(tmp_path), image_python) == {}
    # Extras asked of a distribution bring their own requirements.
    write_wheel(tmp_path, "uvicorn", "0.55.0", ["h11>=0.8", "uvloop>=0.15.1; extra == 'standard'"])
    assert list(wc.missing(["uvicorn>=0.29"], wc.wheel_dists(tmp_path), image_python)) == ["h11>=0.8"]
    assert list(wc.missing(["uvicorn[standard]"], wc.wheel_dists(tmp_path), image_python)) == [
        "h11>=0.8",
        "uvloop>=0.15.1",
    ]


# ---- make_wheelhouse.sh, end to end, with pip download stood in for ------------------------------------------


def write_wheel(
    folder: Path, name: str, version: str, requires=(), requires_python: str | None = None
) -> Path:
    """A wheel file with only METADATA in it: what the closure reads."""
    import zipfile

    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{stem}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


# `python -m pip download` as pip does it (markers evaluated for the Python that runs pip, here a stand-in for
# 3.11.7 whatever runs the test), from the metadata installed here; every call is logged.
PIP_STANDIN = r"""
import json, os, sys
from pathlib import Path
sys.path.insert(0, os.environ["TEST_DIR"])
from test_wheelhouse import load_closure, installed_dists, write_wheel, HOST_PYTHON
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

args = sys.argv[1:]
with open(os.environ["PIP_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
assert args[:3] == ["-m", "pip", "download"], args
args, reqs, dest, deps = args[3:], [], None, True
while args:
    a = args.pop(0)
    if a in ("-d", "--dest"):
        dest = Path(args.pop(0))
    elif a == "-r":
        reqs += [ln for ln in Path(args.pop(0)).read_text().splitlines() if ln.strip()]
    elif a == "--no-deps":
        deps = False
    elif a in ("--implementation", "--python-version", "--abi", "--platform", "--index-url", "--find-links"):
        args.pop(0)
    elif not a.startswith("-"):
        reqs.append(a)
wc = load_closure()
dists = {d.name: d for d in installed_dists()}
needs = wc.closure(reqs, dists.values(), wc.target_environment(HOST_PYTHON)) if deps else None
wanted = needs.specifiers if deps else {canonicalize_name(Requirement(r).name): Requirement(r).specifier for r in reqs}
for name, spec in wanted.items():
    d = dists.get(name)
    if d is not None and spec.contains(d.version, prereleases=True):
        write_wheel(dest, name, str(d.version), d.requires, d.requires_python)
    else:  # not installed here: the least version the requirement names
        lows = [s.version for s in spec if s.operator in (">=", "==", "~=")]
        write_wheel(dest, name, lows[0] if lows else "1.0")
"""


def test_make_wheelhouse_fetches_what_only_the_images_python_needs_and_stamps_it(image_python, tmp_path):
    standin = tmp_path / "pip_standin.py"
    standin.write_text(PIP_STANDIN)
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = -m ] && [ "$2" = pip ]; then exec {sys.executable} {standin} "$@"; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    dest, log = tmp_path / "wheelhouse", tmp_path / "pip.log"
    env = {
        **os.environ,
        "PYTHON": str(python),
        "TORCH_WHEEL_DIR": str(tmp_path / "no-torch-here"),
        "TORCH_VERSION": TORCH_VERSION,
        "PIP_LOG": str(log),
        "TEST_DIR": str(Path(__file__).parent),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("WHEELHOUSE_PYTHON_VERSION", None)
    proc = subprocess.run(
        ["bash", str(DOCKER / "make_wheelhouse.sh"), str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert (
        len(calls) >= 3
    )  # torch, the requirements, then the top-up for the image's markers (+ torchattacks)
    for call in calls:  # every download for the image's exact Python and ABI, Linux x86_64 wheels only
        assert call[call.index("--python-version") + 1] == image_python
        assert call[call.index("--abi") + 1] == "cp" + "".join(image_python.split(".")[:2])
        assert "--only-binary=:all:" in call and "manylinux_2_17_x86_64" in call
    assert f"Python {image_python} needs async-timeout>=4.0.3 (redis " in proc.stderr
    assert list(dest.glob("async_timeout-*.whl")), sorted(p.name for p in dest.iterdir())
    assert (dest / "python-version").read_text().strip() == image_python
    wc = load_closure()
    assert wc.missing(wc.image_requirements(TORCH_VERSION), wc.wheel_dists(dest), image_python) == {}


# ---- the image refuses a wheelhouse made for another interpreter ---------------------------------------------


@pytest.mark.parametrize("stamp, ok", [(None, False), ("3.11.2", None), ("here", True)])
def test_install_refuses_a_wheelhouse_made_for_another_python(tmp_path, stamp, ok):
    here = platform.python_version()
    if stamp == "3.11.2":
        ok = here == "3.11.2"
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    wh = tmp_path / "wheelhouse"
    wh.mkdir()
    (wh / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    if stamp is not None:
        (wh / "python-version").write_text((here if stamp == "here" else stamp) + "\n")
    proc = subprocess.run(
        ["sh", str(DOCKER / "install_python_deps.sh"), "deps"],
        env={**os.environ, "DRY_RUN": "1", "VENV": str(venv), "SRC": str(ROOT), "WHEELHOUSE": str(wh)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (proc.returncode == 0) == ok, proc.stderr
    if not ok:
        assert f"this image runs {here}" in proc.stderr and "make wheelhouse" in proc.stderr
