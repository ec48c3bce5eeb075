"""Where and when a benchmark ran: the stamp that every results page carries.

``stamp(command, seconds, extra, code)`` returns the date (UTC), the git commit of the checkout (and whether tracked files
differed from it), the machine (CPU model, the cores this process may use, memory, OS, Python, torch, the
accelerator if any) and the command; ``write(out_dir, ...)`` saves it as ``provenance.json`` beside the
benchmark's ``report.json``, where ``bench/records/results.py collect`` picks it up.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILE = "provenance.json"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict[str, Any]:
    """The hardware and software a figure was measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gib": _memory_gib(),
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # a stamp must not fail for want of torch
        info["torch"] = None
    return info


def checkout() -> dict[str, Any]:
    """The commit checked out and whether tracked files differ from it; take it when the run starts."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": bool(dirty) if dirty is not None else None}


def stamp(
    command: str,
    seconds: float | None = None,
    extra: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance of a run that ends now. ``code`` is ``checkout()`` taken at its start (default: now);
    ``extra`` holds the benchmark's own figures (e.g. its timings)."""
    return {
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        **(code or checkout()),
        "machine": machine(),
        "command": command,
        "wall_seconds": None if seconds is None else round(seconds, 1),
        "extra": dict(extra or {}),
    }


def write(
    out_dir: str | Path,
    command: str,
    seconds: float | None = None,
    extra: dict[str, Any] | None = None,
    code: dict[str, Any] | None = None,
) -> Path:
    """Write ``provenance.json`` into ``out_dir`` (atomically) and return its path."""
    from training.artifacts import atomic_write_json

    path = Path(out_dir) / FILE
    atomic_write_json(path, stamp(command, seconds, extra, code))
    return path
