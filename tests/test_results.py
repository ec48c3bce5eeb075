"""The results generator (``bench/records/results.py``): a report of a real tiny ``lgm evaluate`` run is collected with
its provenance and rendered into marked blocks of the pages, the prose around them untouched; the committed pages
match the committed records."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import provenance
from bench.records import results

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lgm(*args: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [str(BIN / "lgm"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    """``lgm evaluate`` on a tiny digits model: three attacks, one of them adaptive, tiny budgets."""
    base = tmp_path_factory.mktemp("results")
    art, out = base / "digits", base / "report"
    _lgm("train", "--dataset", "digits", "--epochs", "3", "--feat-dim", "8", "--width", "8", "--threads", "1",
         "--device", "cpu", "--quiet", "--out", str(art))  # fmt: skip
    _lgm("calibrate", str(art), "--device", "cpu", "--quiet")
    _lgm("evaluate", str(art), "--attacks", "fgsm,pgd,adaptive", "--limit", "40", "--steps", "3",
         "--adaptive-steps", "10", "--adaptive-restarts", "1", "--fit-attacks", "", "--bootstrap", "50",
         "--batch-size", "20", "--device", "cpu", "--quiet", "--out", str(out))  # fmt: skip
    provenance.write(out, "lgm evaluate (test)", 1.5, {"evaluate_seconds": 1.0})
    return out


PAGE = """# A page

Prose before, which the generator never touches: 0.123.

<!-- results:detect.headline -->
old headline
<!-- /results:detect.headline -->

<!-- results:detect.auroc -->
old table
<!-- /results:detect.auroc -->

Prose after.
"""


def _tree(tmp_path: Path, page: str = PAGE) -> Path:
    (tmp_path / "docs" / "results" / "data").mkdir(parents=True)
    (tmp_path / "README.md").write_text(
        "# readme\n\n<!-- results:detect.stamp -->\nold\n<!-- /results:detect.stamp -->\n"
    )
    (tmp_path / "docs" / "page.md").write_text(page)
    return tmp_path


def test_collect_and_build_render_the_report(report_dir, tmp_path):
    root = _tree(tmp_path)
    data = root / "docs" / "results" / "data"
    path = results.collect("detect", report_dir, data)
    rec = json.loads(path.read_text())
    report = json.loads((report_dir / "report.json").read_text())
    assert rec["report"] == report and rec["provenance"]["command"] == "lgm evaluate (test)"
    assert re.fullmatch(r"[0-9a-f]{40}", rec["provenance"]["commit"])
    assert rec["provenance"]["machine"]["cores"] >= 1

    changed = results.build(root, data)
    assert set(changed) == {root / "README.md", root / "docs" / "page.md"}
    page = (root / "docs" / "page.md").read_text()
    before, rest = page.split("<!-- results:detect.headline -->\n", 1)
    assert before == PAGE.split("<!-- results:detect.headline -->\n", 1)[0]
    assert page.endswith("<!-- /results:detect.auroc -->\n\nProse after.\n")
    assert "old headline" not in page and "old table" not in page
    # every attack is a row of the headline, with lgm's AUROC and its interval as the report has them
    for name, a in report["attacks"].items():
        m = a["detectors"]["lgm"]
        cell = f"{m['auroc']:.3f} [{m['auroc_ci'][0]:.3f}, {m['auroc_ci'][1]:.3f}]"
        row = next(line for line in rest.splitlines() if line.startswith(f"| {name} |"))
        assert cell in row, (cell, row)
        assert f"{a['success_rate']:.1%}" in row
    readme = (root / "README.md").read_text()
    assert f"at commit `{rec['provenance']['commit'][:10]}`" in readme
    assert "lgm evaluate (test)" in readme and rec["provenance"]["machine"]["cpu"] in readme

    assert results.build(root, data) == []  # a second build changes nothing
    (root / "docs" / "page.md").write_text(page.replace("| fgsm |", "| FGSM |"))
    assert results.build(root, data, check=True) == [root / "docs" / "page.md"]
    assert "| FGSM |" in (root / "docs" / "page.md").read_text()  # --check writes nothing


def test_every_renderer_runs_on_a_real_report(report_dir, tmp_path):
    results.collect("detect", report_dir, tmp_path)
    rec = results.load_records(tmp_path)["detect"]
    for name, render in results.RENDERERS.items():
        if not name.startswith("detect."):
            continue
        text = render(rec)
        assert text.strip(), name
        assert "<!--" not in text, name  # a rendering never opens a block of its own


def test_robust_record_renders_every_evaluation(report_dir, tmp_path):
    """bench/detection/robust.py runs several evaluations: collect keeps each report under its folder's name."""
    runs = tmp_path / "bench_robust"
    for key in ("robust_eps0.3", "quick_eps0.3", "robust_eps0.2", "sanity_eps0.5"):
        (runs / key).mkdir(parents=True)
        (runs / key / "report.json").write_text((report_dir / "report.json").read_text())
    provenance.write(runs, "bench/detection/robust.py (test)", 2.0)
    results.collect("robust", runs, tmp_path)
    rec = results.load_records(tmp_path)["robust"]
    assert sorted(rec["reports"]) == ["quick_eps0.3", "robust_eps0.2", "robust_eps0.3", "sanity_eps0.5"]
    rep = rec["reports"]["robust_eps0.3"]
    summary = results.RENDERERS["robust.summary"](rec).splitlines()
    assert [r.split(" |")[0] for r in summary[2:]] == [
        f"| robust, 0.3 ({rep['n_attacked']} attacked)",
        f"| quick, 0.3 ({rep['n_attacked']} attacked)",
        f"| robust, 0.2 ({rep['n_attacked']} attacked)",
    ]
    lgm = rep["per_input_worst"]["adaptive"]["detectors"]["lgm"]
    assert f"{lgm['detect_or_correct']:.3f} [{lgm['detect_or_correct_ci'][0]:.3f}," in summary[2]
    sanity = results.RENDERERS["robust.sanity"](rec).splitlines()
    assert [r.split(" |")[0] for r in sanity[2:]] == ["| 0.2", "| 0.3", "| 0.5"]  # by eps
    pgd = rep["attacks"]["pgd"]
    assert f"{pgd['success_rate']:.3f} / {pgd['detectors']['msp']['success_rate']:.3f}" in sanity[3]
    checks = results.RENDERERS["robust.checks"](rec)
    assert f"lgm detect-or-correct at 0.3 >= 0.93: {lgm['detect_or_correct']:.3f}" in checks
    for name in ("robust.attacks", "robust.stamp"):
        assert results.RENDERERS[name](rec).strip()


def test_block_without_a_record_is_kept(tmp_path):
    root = _tree(tmp_path)
    assert results.build(root, root / "docs" / "results" / "data") == []
    assert (root / "docs" / "page.md").read_text() == PAGE


def test_unknown_block_and_bad_input_are_one_line_errors(tmp_path, report_dir, capsys):
    root = _tree(tmp_path, PAGE.replace("detect.auroc", "detect.nosuch"))
    data = root / "docs" / "results" / "data"
    results.collect("detect", report_dir, data)
    with pytest.raises(results.ResultsError, match="unknown results block 'detect.nosuch'"):
        results.build(root, data)
    (report_dir / "copy").mkdir(exist_ok=True)
    (report_dir / "copy" / "report.json").write_text((report_dir / "report.json").read_text())
    with pytest.raises(results.ResultsError, match=r"provenance\.json: missing"):
        results.collect("detect", report_dir / "copy", data)
    with pytest.raises(results.ResultsError, match="record name"):
        results.collect("../x", report_dir, data)
    assert results.main(["collect", "detect", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench/records/results.py: ") and err.count("\n") == 1


def test_committed_pages_match_their_records():
    """What `make results` would write is what is committed (a re-measure must go through the generator)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "records" / "results.py"), "build", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
