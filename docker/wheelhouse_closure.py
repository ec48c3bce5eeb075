"""What the API image's interpreter needs from the wheelhouse, with environment markers evaluated for *that*
interpreter (part of ``docker/make_wheelhouse.sh``; ``tests/test_wheelhouse.py`` runs it offline).

Why: ``pip download --python-version 3.11.2 --platform ...`` uses the target only for wheel tags and
``Requires-Python``; it evaluates environment markers against the interpreter running pip (pip's documentation
of ``--python-version`` names only those two checks, and pip 26.3 on Python 3.11.7 resolves ``redis`` without
``async-timeout>=4.0.3; python_full_version < "3.11.3"``). The image's Python (``docker/python-version``,
Debian bookworm's 3.11.2) needs it. So the wheelhouse is made in rounds: pip resolves as it does, then this
script walks the dependency graph of the wheels it got, from the image's requirements, evaluating every marker
against the image's environment (``packaging.markers``, the PyPA reference implementation of PEP 508), and
prints each requirement that no wheel in the folder satisfies; the shell script downloads those and asks again
until nothing is missing. The wheelhouse may then hold a few wheels only the host needed: pip in the image
(``--no-index``, the real interpreter) simply leaves them out.

    python docker/wheelhouse_closure.py python-version            the image's Python, from docker/python-version
    python docker/wheelhouse_closure.py requirements TORCH_VERSION   the image's requirements, one a line
    python docker/wheelhouse_closure.py missing DEST PY_VERSION TORCH_VERSION
                                                    what DEST lacks for that Python on Linux x86_64, one a line
"""

from __future__ import annotations

import re
import sys
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION_FILE = ROOT / "docker" / "python-version"


def image_python_version(path: Path = PYTHON_VERSION_FILE) -> str:
    """The X.Y.Z in ``docker/python-version`` (the one line that is not a comment)."""
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not re.fullmatch(r"\d+\.\d+\.\d+", lines[0]):
        raise ValueError(f"{path}: expected one line X.Y.Z besides comments, found {lines}")
    return lines[0]


def target_environment(python_version: str, machine: str = "x86_64") -> dict[str, str]:
    """PEP 508 marker variables of CPython ``python_version`` (X.Y.Z) on Linux ``machine``, as
    ``packaging.markers.default_environment()`` would give inside the image. The kernel's release and version
    are the host's at run time, unknowable here: empty (no requirement of the image's tests them)."""
    major, minor, _ = python_version.split(".")
    return {
        "implementation_name": "cpython",
        "implementation_version": python_version,
        "os_name": "posix",
        "platform_machine": machine,
        "platform_release": "",
        "platform_system": "Linux",
        "platform_version": "",
        "python_full_version": python_version,
        "platform_python_implementation": "CPython",
        "python_version": f"{major}.{minor}",
        "sys_platform": "linux",
    }


def image_requirements(torch_version: str, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """What docker/install_python_deps.sh installs with dependencies: the CPU torch, then the project's
    dependencies but torch as pyproject.toml lists them (and its [tool.lgm] image-extras); installing the project itself builds it with the
    build system's requirements (and wheel). torchattacks goes in with --no-deps: not part of the graph."""
    project = tomllib.loads(pyproject.read_text())
    listed = list(project["project"]["dependencies"])
    for extra in project.get("tool", {}).get("lgm", {}).get("image-extras", []):  # the extras the image takes
        listed += project["project"]["optional-dependencies"][extra]
    deps = [d for d in listed if canonicalize_name(Requirement(d).name) != "torch"]
    return [f"torch=={torch_version}+cpu", *project["build-system"]["requires"], "wheel", *deps]


@dataclass(frozen=True)
class Dist:
    """One distribution: a wheel in the wheelhouse or an installed one (tests/test_wheelhouse.py)."""

    name: str  # canonical
    version: Version
    requires: tuple[str, ...]
    requires_python: str | None = None


def wheel_dists(folder: Path) -> list[Dist]:
    """Every ``*.whl`` in ``folder``, with the Requires-Dist and Requires-Python of its METADATA."""
    dists = []
    for whl in sorted(folder.glob("*.whl")):
        name, version, _, _ = parse_wheel_filename(whl.name)
        with zipfile.ZipFile(whl) as z:
            meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
            headers = HeaderParser().parsestr(z.read(meta).decode("utf-8"))
        dists.append(
            Dist(name, version, tuple(headers.get_all("Requires-Dist") or ()), headers.get("Requires-Python"))
        )
    return dists


@dataclass
class Needs:
    """What the target interpreter asks for: per distribution, the specifiers every edge that reaches it puts
    on it (all must hold for the one version pip installs) and the extras asked for."""

    specifiers: dict[str, SpecifierSet] = field(default_factory=dict)
    extras: dict[str, set[str]] = field(default_factory=dict)
    by: dict[str, set[str]] = field(default_factory=dict)  # who asks, for messages: "redis 8.2.0"

    def requirement(self, name: str) -> str:
        extras = f"[{','.join(sorted(self.extras[name]))}]" if self.extras[name] else ""
        return f"{name}{extras}{self.specifiers[name]}"


def fits(dist: Dist, spec: SpecifierSet, python_version: str) -> bool:
    return spec.contains(dist.version, prereleases=True) and (
        dist.requires_python is None or SpecifierSet(dist.requires_python).contains(python_version)
    )


def closure(roots: Iterable[str], dists: Iterable[Dist], env: Mapping[str, str]) -> Needs:
    """Walk the graph from ``roots`` through ``dists``: an edge counts when its marker is true for ``env``
    (with ``extra`` set to each extra asked of the distribution, and to "" for its base requirements), and
    the walk follows every dist of that name whose version the edge allows (a superset of pip's choice)."""
    by_name: dict[str, list[Dist]] = {}
    for d in dists:
        by_name.setdefault(d.name, []).append(d)
    needs, followed = Needs(), set()
    todo = [(Requirement(r), "the image") for r in roots]
    while todo:
        req, asker = todo.pop()
        name = canonicalize_name(req.name)
        needs.specifiers[name] = needs.specifiers.get(name, SpecifierSet()) & req.specifier
        needs.extras.setdefault(name, set()).update(req.extras)
        needs.by.setdefault(name, set()).add(asker)
        for d in by_name.get(name, ()):
            if not req.specifier.contains(d.version, prereleases=True):
                continue
            for extra in ("", *sorted(req.extras)):
                if (d, extra) in followed:
                    continue
                followed.add((d, extra))
                for dep in map(Requirement, d.requires):
                    if dep.marker is None or dep.marker.evaluate({**env, "extra": extra}):
                        todo.append((dep, f"{d.name} {d.version}"))
    return needs


def missing(roots: Iterable[str], dists: Iterable[Dist], python_version: str) -> dict[str, list[str]]:
    """Requirements (markers already evaluated, so none left) that the image's interpreter has and no one
    distribution in ``dists`` meets (right name, a version every edge allows, Requires-Python admitting
    ``python_version``), each with the distributions that ask for it."""
    dists = list(dists)
    needs = closure(roots, dists, target_environment(python_version))
    return {
        needs.requirement(name): sorted(needs.by[name])
        for name, spec in sorted(needs.specifiers.items())
        if not any(d.name == name and fits(d, spec, python_version) for d in dists)
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["python-version"] and len(argv) == 1:
        print(image_python_version())
    elif argv[:1] == ["requirements"] and len(argv) == 2:
        print("\n".join(image_requirements(argv[1])))
    elif argv[:1] == ["missing"] and len(argv) == 4:
        _, dest, python_version, torch_version = argv
        gaps = missing(image_requirements(torch_version), wheel_dists(Path(dest)), python_version)
        for requirement, askers in gaps.items():
            print(
                f"wheelhouse: Python {python_version} needs {requirement} ({', '.join(askers)})",
                file=sys.stderr,
            )
            print(requirement)
    else:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
