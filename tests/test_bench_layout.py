"""bench/'s layout holds: every folder is a package that says what is in it, every script imports from the
repository root the same way, and import-linter's contracts (pyproject.toml) cover bench: the project never
imports it, and no two of its modules import each other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BOOTSTRAP = (
    'if __name__ == "__main__":  # run as a script: import from the repository root, not this folder\n'
)


def _contracts() -> list[dict]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
        import tomli as tomllib

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    assert "bench" in tool["root_packages"]
    return tool["contracts"]


def test_every_folder_is_a_package_with_a_docstring():
    folders = [BENCH, *(p for p in BENCH.iterdir() if p.is_dir() and p.name != "__pycache__")]
    assert len(folders) >= 5
    for folder in folders:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)} says nothing"


def test_scripts_import_from_the_repository_root():
    """A script (``if __name__ == "__main__"`` at its end) puts the repository root in place of its folder on
    ``sys.path`` before its own imports, and imports bench modules by full name only."""
    scripts = 0
    for path in sorted(BENCH.rglob("*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        bare = {p.stem for p in BENCH.rglob("*.py")} - {"__init__"}
        assert not [n for n in names if n in bare], (
            f"{path.relative_to(ROOT)} imports a bench module by bare name"
        )
        if '__name__ == "__main__"' in text:
            scripts += 1
            assert BOOTSTRAP in text, f"{path.relative_to(ROOT)}: a script without the sys.path line"
            head, tail = text.split(BOOTSTRAP, 1)
            assert "parents[2]" in tail.splitlines()[0] and "bench" not in "".join(
                ln for ln in head.splitlines() if ln.startswith(("import ", "from "))
            ), f"{path.relative_to(ROOT)}: bench imported before the sys.path line"
    assert scripts >= 14


def test_the_contracts_cover_bench():
    contracts = _contracts()
    assert any(
        c["type"] == "forbidden"
        and {"training", "detector", "service"} <= set(c["source_modules"])
        and c["forbidden_modules"] == ["bench"]
        for c in contracts
    )
    acyclic = [c for c in contracts if c["type"] == "acyclic_siblings" and "bench" in c["ancestors"]]
    assert acyclic and all(c.get("depth", 10) >= 2 and not c.get("ignore_imports") for c in acyclic)
