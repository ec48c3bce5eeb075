"""The documentation site builds with ``mkdocs build --strict`` (a broken link or anchor, a page left out of the
navigation, a missing included file: each fails), offline, and loads nothing from elsewhere when read."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out, done.stdout + done.stderr


def test_site_builds_strictly_without_warnings(site):
    out, log = site
    assert "WARNING" not in log, log
    pages = {p.relative_to(ROOT / "docs").with_suffix(".html") for p in (ROOT / "docs").rglob("*.md")}
    assert pages and all((out / p).is_file() for p in pages), "a page of docs/ was not built"


def test_pages_load_nothing_from_other_hosts(site):
    """No web fonts, scripts, styles or images from a CDN: the site reads the same offline."""
    out, _ = site
    tag = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*\b(?:src|href)=\"((?:https?:)?//[^\"]+)\"")
    for page in out.rglob("*.html"):
        text = page.read_text()
        assert not tag.findall(text), f"{page.relative_to(out)} loads {tag.findall(text)}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text


def test_examples_are_included_as_they_are(site):
    """The getting-started page shows the example files the tests run, not a copy that can drift."""
    out, _ = site
    text = html.unescape(re.sub(r"<[^>]+>", "", (out / "getting-started.html").read_text()))
    for name in ("head_and_loss.py", "score_images.py"):
        for line in (ROOT / "examples" / name).read_text().splitlines():
            assert line.strip() in text, f"examples/{name}: {line!r} is not on the page"
