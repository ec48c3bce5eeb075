"""Benchmark: the L-GM head versus the softmax head on the same CNN, same data, seed and epochs.

Trains both heads with the default TrainConfig on ``mnist5k`` (3,500 train / 500 calibration / 1,000 test)
and prints a markdown table: test accuracy of each, seconds per training epoch, and their ratio, checked against
the project's targets (L-GM test accuracy >= 98.5% within 10 epochs; L-GM >= softmax; L-GM epoch time
<= 1.15x softmax). ``--cifar-synthetic`` instead times training epochs of the CIFAR ResNet-20 (both heads) on
random 32x32 colour images, for GPU runs (keep ``--cifar-n`` small on a CPU).

    python bench/training/train.py                       # mnist5k, 10 epochs, seed 0
    python bench/training/train.py --seeds 0 1 2 --json bench-train.json
    python bench/training/train.py --cifar-synthetic --device cuda --cifar-n 50000

Each run writes ``report.json`` and ``provenance.json`` into ``--out`` (``reports/bench_train``, or
``reports/bench_train_cifar`` with ``--cifar-synthetic``), which ``bench/records/results.py collect train DIR`` publishes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench import provenance
from training.artifacts import atomic_write_json
from training.config import TrainConfig
from training.data import Dataset, Split, load_dataset
from training.distributed import resolve_device
from training.trainer import Run, train

HEADS = ("lgm", "softmax")
LABEL = {"lgm": "L-GM", "softmax": "softmax"}
TARGET_ACC, TARGET_RATIO = 0.985, 1.15


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} torch threads"


def time_heads(
    ds: Dataset, cfgs: dict[str, TrainConfig], device: torch.device, rounds: int
) -> dict[str, list[float]]:
    """Seconds of training epochs of each head, interleaved (L-GM, softmax, softmax, L-GM, ...), so that load
    from other processes falls on both heads alike. Uses the trainer's own epoch loop."""
    secs: dict[str, list[float]] = {h: [] for h in cfgs}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:  # train_epoch writes nothing there
        runs = {head: Run(cfg, tmp, ds=ds) for head, cfg in cfgs.items()}
        for r in range(rounds):
            for head in list(cfgs) if r % 2 == 0 else list(cfgs)[::-1]:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                runs[head].train_epoch(r)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                secs[head].append(time.perf_counter() - t0)
    return secs


def run_mnist(args: argparse.Namespace) -> dict[str, Any]:
    """Train both heads for every seed; per head: mean test accuracy and median seconds per epoch."""
    runs: dict[str, list[dict[str, Any]]] = {h: [] for h in HEADS}
    for seed in args.seeds:
        for head in HEADS:  # interleaved, so background load hits both heads alike
            cfg = TrainConfig(
                dataset="mnist5k", epochs=args.epochs, seed=seed, head=head, device=args.device, quiet=True
            )
            with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
                meta = train(cfg, tmp)
            secs = [h["seconds"] for h in meta["history"]]
            run = {
                "seed": seed,
                "test_accuracy": meta["metrics"]["test_accuracy"],
                "calibration_accuracy": meta["metrics"]["calibration_accuracy"],
                "seconds_per_epoch": statistics.median(secs),
                "epoch_seconds": secs,
            }
            runs[head].append(run)
            print(
                f"  seed {seed} {LABEL[head]:8s} test acc {run['test_accuracy']:.4f}  "
                f"{run['seconds_per_epoch']:.2f} s/epoch",
                file=sys.stderr,
                flush=True,
            )
    summary = {
        h: {
            "test_accuracy": statistics.mean(r["test_accuracy"] for r in rs),
            "test_accuracy_min": min(r["test_accuracy"] for r in rs),
            "calibration_accuracy": statistics.mean(r["calibration_accuracy"] for r in rs),
        }
        for h, rs in runs.items()
    }
    # epoch time: a separate interleaved measurement (the full runs above ran one after the other, so any
    # background load during one of them would bias the ratio); the first round is warm-up
    device = resolve_device(args.device)
    ds = load_dataset("mnist5k", seed=0)
    cfgs = {h: TrainConfig(epochs=args.epochs, head=h, device=str(device), quiet=True) for h in HEADS}
    secs = time_heads(ds, cfgs, device, rounds=args.timing_rounds + 1)
    for h in HEADS:
        summary[h]["seconds_per_epoch"] = statistics.median(secs[h][1:])
        summary[h]["timing_epoch_seconds"] = secs[h]
        summary[h]["seconds_per_epoch_full_runs"] = statistics.mean(r["seconds_per_epoch"] for r in runs[h])
        print(
            f"  timing {LABEL[h]:8s} {summary[h]['seconds_per_epoch']:.2f} s/epoch (interleaved)",
            file=sys.stderr,
        )
    return {"summary": summary, "runs": runs, "config": TrainConfig(epochs=args.epochs).to_dict()}


def targets(res: dict[str, Any]) -> list[tuple[str, bool]]:
    """The project's targets for the mnist5k comparison, checked on a result of ``run_mnist``."""
    lgm, sm = res["summary"]["lgm"], res["summary"]["softmax"]
    ratio = lgm["seconds_per_epoch"] / sm["seconds_per_epoch"]
    return [
        (f"L-GM test accuracy >= {100 * TARGET_ACC:.1f}%", lgm["test_accuracy"] >= TARGET_ACC),
        ("L-GM test accuracy >= softmax", lgm["test_accuracy"] >= sm["test_accuracy"]),
        (f"L-GM epoch time <= {TARGET_RATIO:.2f}x softmax", ratio <= TARGET_RATIO),
    ]


def mnist_table(res: dict[str, Any]) -> str:
    """The mnist5k comparison as markdown: what the benchmark prints and what docs/results/training.md shows."""
    s = res["summary"]
    lgm, sm = s["lgm"], s["softmax"]
    ratio = lgm["seconds_per_epoch"] / sm["seconds_per_epoch"]
    seeds_ = res["seeds"]
    n = len(seeds_)
    seeds = f"seed {seeds_[0]}" if n == 1 else f"mean of {n} seeds ({', '.join(map(str, seeds_))})"
    lines = [
        f"mnist5k (3,500 train / 500 calibration / 1,000 test), {res['epochs']} epochs, {seeds}; "
        f"{res['device']}",
        "",
        "| head | test accuracy | calibration accuracy | s / epoch |",
        "|---|---|---|---|",
    ]
    for h in HEADS:
        r = s[h]
        lines.append(
            f"| {LABEL[h]} | {100 * r['test_accuracy']:.2f}% | {100 * r['calibration_accuracy']:.2f}% "
            f"| {r['seconds_per_epoch']:.2f} |"
        )
    lines += [
        f"| L-GM / softmax | {100 * (lgm['test_accuracy'] - sm['test_accuracy']):+.2f} pts | "
        f"{100 * (lgm['calibration_accuracy'] - sm['calibration_accuracy']):+.2f} pts | {ratio:.2f}x |",
        "",
        f"s / epoch: median of {res['timing_rounds']} training epochs per head, timed interleaved "
        "(L-GM, softmax, softmax, L-GM, ...) after one warm-up epoch each.",
        "",
        *(f"- {text}: {'met' if ok else 'NOT met'}" for text, ok in targets(res)),
    ]
    return "\n".join(lines)


def run_cifar_synthetic(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Time training epochs of the CIFAR ResNet on random 32x32 RGB images through the real training loop."""
    g = torch.Generator().manual_seed(0)
    n = args.cifar_n
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    tiny = Split(x[:2], y[:2])
    ds = Dataset(
        "cifar-synthetic",
        Split(x, y),
        tiny,
        tiny,
        [str(i) for i in range(10)],
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        "crop_flip",
    )
    cfgs = {
        h: TrainConfig(
            dataset="cifar10",
            epochs=args.cifar_epochs,
            head=h,
            feat_dim=64,
            batch_size=args.batch_size,
            device=str(device),
            quiet=True,
        )
        for h in HEADS
    }
    secs = time_heads(ds, cfgs, device, rounds=args.cifar_epochs)
    out: dict[str, Any] = {}
    for head in HEADS:
        # the first epoch is warm-up (cuDNN autotune, allocator)
        steady = secs[head][1:] if len(secs[head]) > 1 else secs[head]
        med = statistics.median(steady)
        out[head] = {"seconds_per_epoch": med, "epoch_seconds": secs[head], "images_per_second": n / med}
        print(f"  {LABEL[head]:8s} {med:.2f} s/epoch", file=sys.stderr, flush=True)
    return out


def cifar_table(res: dict[str, Any]) -> str:
    """The synthetic CIFAR timing as markdown (``--cifar-synthetic``)."""
    lgm, sm = res["lgm"], res["softmax"]
    lines = [
        f"CIFAR ResNet-20 on {res['cifar_n']:,} synthetic 32x32 images, batch {res['batch_size']}, "
        f"{res['cifar_epochs']} epochs (first one excluded as warm-up); {res['device']}",
        "",
        "| head | s / epoch (median) | images / s |",
        "|---|---|---|",
        *(
            f"| {LABEL[h]} | {res[h]['seconds_per_epoch']:.3f} | {res[h]['images_per_second']:.0f} |"
            for h in HEADS
        ),
        f"| L-GM / softmax | {lgm['seconds_per_epoch'] / sm['seconds_per_epoch']:.2f}x | |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs per mnist5k run")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds; means are reported over them")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--timing-rounds", type=int, default=3, help="interleaved timed epochs per head (mnist5k)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--out",
        default=None,
        help="folder of report.json + provenance.json (default reports/bench_train, "
        "reports/bench_train_cifar with --cifar-synthetic)",
    )
    p.add_argument(
        "--cifar-synthetic", action="store_true", help="time the CIFAR ResNet-20 on synthetic data"
    )
    p.add_argument(
        "--cifar-n", type=int, default=None, help="synthetic images (default 50000 on CUDA, 512 on CPU)"
    )
    p.add_argument("--cifar-epochs", type=int, default=3, help="synthetic epochs (the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=128, help="batch size of the synthetic CIFAR runs")
    args = p.parse_args(argv)
    if min(args.epochs, args.cifar_epochs, args.timing_rounds) < 1 or args.batch_size < 2:
        p.error("--epochs, --cifar-epochs and --timing-rounds must be >= 1, --batch-size >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    code = provenance.checkout()  # the code measured is the code at the start
    device = resolve_device(args.device)
    dev_name = device_name(device)
    command = ".venv/bin/python bench/training/train.py" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    if args.cifar_synthetic:
        args.cifar_n = args.cifar_n or (50_000 if device.type == "cuda" else 512)
        res = run_cifar_synthetic(args, device)
        res.update(cifar_n=args.cifar_n, batch_size=args.batch_size, cifar_epochs=args.cifar_epochs)
        res.update(
            device=dev_name, ratio=res["lgm"]["seconds_per_epoch"] / res["softmax"]["seconds_per_epoch"]
        )
        print("\n" + cifar_table(res))
    else:
        res = run_mnist(args)
        res.update(epochs=args.epochs, seeds=args.seeds, timing_rounds=args.timing_rounds, device=dev_name)
        s = res["summary"]
        res["ratio"] = s["lgm"]["seconds_per_epoch"] / s["softmax"]["seconds_per_epoch"]
        res["targets"] = dict(targets(res))
        print("\n" + mnist_table(res))
    print(f"\ncommand: {command}")
    res.update(benchmark="train", mode="cifar_synthetic" if args.cifar_synthetic else "mnist5k")
    res.update(command=command, torch=torch.__version__)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    out = Path(args.out or ("reports/bench_train_cifar" if args.cifar_synthetic else "reports/bench_train"))
    atomic_write_json(out / "report.json", res)
    prov = provenance.write(out, command, time.perf_counter() - t0, None, code)
    name = "train_cifar" if args.cifar_synthetic else "train"
    print(f"provenance: {prov} (publish: .venv/bin/python bench/records/results.py collect {name} {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
