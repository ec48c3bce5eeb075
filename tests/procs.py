"""Run a command the tests wait on: to its exit, or to a deadline that fails the test loudly.

``subprocess.run(..., timeout=...)`` is not enough for the tests that start ``lgm`` or ``torchrun``: on its deadline
it kills only the process it started, and then waits for the end of the output pipes, which the children of that
process (torchrun's ranks) still hold open. So a run that overstays hangs on until pytest's own timeout, and the
ranks it leaves behind keep the machine's cores busy through the tests after it. ``run_group`` starts the command
in a session of its own and, on the deadline or on any interruption (pytest's timeout, Ctrl-C), kills the whole
process group before failing with the command, the deadline and the tails of what it printed.

Deadlines are for a loaded 2-core machine (another process keeping both cores busy), not for an idle one: a command
that needs a few seconds there gets minutes here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_group(
    cmd: Sequence[str | Path],
    *,
    deadline_s: float,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to its exit (text output captured) and return it; past ``deadline_s`` seconds kill it and every
    process it started, and fail the test with an AssertionError that names the command and the deadline."""
    args = [str(a) for a in cmd]
    proc = subprocess.Popen(
        args,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{' '.join(args[:3])} ... still running after its {deadline_s:.0f} s deadline: killed it and its "
            f"children.\nstdout tail: {out[-1000:]}\nstderr tail: {err[-2000:]}"
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
