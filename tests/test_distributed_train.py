"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) train one model; rank 0 writes one artifact."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import torch
from procs import run_group
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


# The deadline of the whole torchrun (two ranks importing torch, training two epochs, rank 0 writing the artifact):
# about 15 s on an idle 2-core machine and 35 s with both cores kept busy by another process. It stays under
# pytest's own --timeout (pyproject.toml), so that run_group's cleanup, which kills the ranks, is what runs.
DEADLINE_S = 480


def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "art"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("WORLD_SIZE", None)
    # --standalone: the rendezvous store listens on a port the OS gives it when it binds (port 0), and the ranks
    # join that store. Picking a free port here and passing --master_port left a window, as long as torchrun
    # takes to start (seconds on a loaded machine), in which another process could take the port.
    # --local-addr: the ranks reach the store on the loopback address rather than through the host's name.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--local-addr",
        "127.0.0.1",
        str(script),
        str(out),
    ]
    proc = run_group(cmd, env=env, deadline_s=DEADLINE_S)
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
