"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) train one model; rank 0 writes one artifact."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

# Runs on every rank: trains through the real entry point, then saves this rank's final weights and buffers so
# the test can compare ranks. Classifier is wrapped only to get hold of the instance the trainer builds.
DRIVER = textwrap.dedent(
    """
    import os, sys
    import torch
    from safetensors.torch import save_file
    import training.trainer as trainer
    from training.config import TrainConfig

    built = []

    class Recording(trainer.Classifier):
        def __init__(self, spec):
            super().__init__(spec)
            built.append(self)

    trainer.Classifier = Recording
    torch.set_num_threads(1)
    out = sys.argv[1]
    cfg = TrainConfig(dataset="digits", epochs=2, feat_dim=4, width=4, batch_size=64, device="cpu", quiet=True)
    meta = trainer.train(cfg, out)
    rank = int(os.environ["RANK"])
    state = {k: v.detach().contiguous() for k, v in built[0].state_dict().items()}
    save_file(state, os.path.join(out, f"rank{rank}.safetensors"))
    print(f"rank {rank} world {os.environ['WORLD_SIZE']} meta {bool(meta)}", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_group(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill the whole group (torchrun and its workers)."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun timed out after {timeout} s; stderr tail: {err[-2000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "art"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(script),
        str(out),
    ]
    proc = _run_group(cmd, env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 world 2 meta True" in proc.stdout and "rank 1 world 2 meta False" in proc.stdout

    # every rank ends with the same parameters and (averaged) BatchNorm statistics
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], msg=lambda m, k=k: f"{k} differs between ranks: {m}")
    # rank 0 wrote one artifact, and it is rank 0's model
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "checkpoint.json",
        "checkpoint.safetensors",
        "model.json",
        "model.safetensors",
        "rank0.safetensors",
        "rank1.safetensors",
    ]
    art = load_file(str(out / "model.safetensors"))
    for k in art:
        torch.testing.assert_close(art[k], r0[k], rtol=0, atol=0)
    meta = json.loads((out / "model.json").read_text())
    assert meta["world_size"] == 2
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert meta["metrics"]["test_accuracy"] > 0.1
