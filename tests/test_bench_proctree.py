"""bench/serving/proctree.py: a process tree's CPU time and resident memory add up its descendants."""

from __future__ import annotations

import select
import subprocess
import sys
import time

import pytest

from bench.serving import proctree

# The child writes to every page of its 64 MiB (so all of it is resident, whatever the allocator does), then
# says so on the stdout it shares with its parent, then spins; the parent spins too.
CHILD = (
    "x = bytearray(64 << 20)\n"
    "for i in range(0, len(x), 4096):\n    x[i] = 1\n"
    "print('touched', flush=True)\n"
    "while True: pass\n"
)
BUSY = (
    "import subprocess, sys, time\n"
    f"c = subprocess.Popen([sys.executable, '-c', {CHILD!r}])\n"
    "t = time.time()\nwhile time.time() - t < 60: pass\n"
)


def _wait_for_line(proc: subprocess.Popen, expected: str, seconds: float) -> None:
    """Read ``proc``'s stdout until the line ``expected``; fail loudly if it does not come within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                pytest.fail(f"the process tree exited (code {proc.poll()}) before saying {expected!r}")
    pytest.fail(f"no {expected!r} from the process tree within {seconds:.0f} s")


def _wait_until(condition, what: str, seconds: float) -> None:
    """Poll ``condition()`` until it is true; fail loudly, naming ``what``, if it is not within ``seconds``."""
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.05)


def test_tree_counts_the_child_processes():
    parent = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        _wait_for_line(parent, "touched", 30)  # the child runs and its 64 MiB are resident
        pids = proctree.tree(parent.pid)
        assert pids[0] == parent.pid and len(pids) == 2
        # CPU time, not wall time: on a loaded machine half a second of wall time may be a tenth of a CPU second
        _wait_until(lambda: proctree.cpu_seconds(pids[1]) > 0.1, "the child's 0.1 CPU-s", 30)
        child_only = proctree.cpu_seconds(pids[1])
        assert proctree.cpu_seconds(parent.pid) > child_only > 0.1
        assert proctree.rss_mib(parent.pid) > proctree.rss_mib(pids[1]) > 64  # the child's 64 MiB, and more
    finally:
        for p in reversed(proctree.tree(parent.pid)):
            subprocess.run(["kill", str(p)], check=False)
        parent.wait(timeout=10)
        parent.stdout.close()
