"""bench/serving/proctree.py: a process tree's CPU time and resident memory add up its descendants."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.serving import proctree

BUSY = "import subprocess, sys, time\n" + (
    "c = subprocess.Popen([sys.executable, '-c', 'x = bytearray(64 << 20)\\nwhile True: pass'])\n"
    "t = time.time()\nwhile time.time() - t < 30: pass\n"
)


def test_tree_counts_the_child_processes():
    parent = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        deadline = time.time() + 20
        while len(proctree.tree(parent.pid)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        pids = proctree.tree(parent.pid)
        assert pids[0] == parent.pid and len(pids) == 2
        # wait for CPU time, not wall time: on a loaded machine half a second of wall time may be a tenth of CPU
        while proctree.cpu_seconds(pids[1]) <= 0.1 and time.time() < deadline:
            time.sleep(0.05)
        child_only = proctree.cpu_seconds(pids[1])
        assert proctree.cpu_seconds(parent.pid) > child_only > 0.1
        assert proctree.rss_mib(parent.pid) > proctree.rss_mib(pids[1]) > 64  # the child's 64 MiB, and more
    finally:
        for p in reversed(proctree.tree(parent.pid)):
            subprocess.run(["kill", str(p)], check=False)
        parent.wait(timeout=10)
