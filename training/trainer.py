"""Train an L-GM (or softmax) classifier, checkpoint every epoch, write the model artifact.

Determinism: every random draw of epoch e (shuffle, augmentation, dropout-free layers) comes from generators
seeded by (seed, e), and the learning rate and margin are pure functions of (epoch, iteration). So a run resumed
from the checkpoint of epoch e replays epochs e+1.. exactly as an uninterrupted run would (on the CPU).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.artifacts import save_artifact
from training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from training.config import LGM_KEYS, RUN_ONLY, TrainConfig
from training.data import Dataset, Split, augment_batch, load_dataset
from training.distributed import (
    DistInfo,
    all_reduce_sum,
    average_buffers,
    barrier,
    init_distributed,
    resolve_device,
    shutdown,
)  # fmt: skip
from training.lgm import LGMHead
from training.loss import AlphaSchedule, lgm_loss
from training.model import Classifier, ModelSpec

# options a resumed run may change; any other difference would not end in the state of an uninterrupted run
RESUME_MAY_CHANGE = ("epochs", "data_root", *RUN_ONLY)


def check_resumable(out: Path, cfg: TrainConfig) -> None:
    """Raise ValueError (one line) when the checkpoint in ``out`` was trained with other options."""
    from training.artifacts import read_json
    from training.checkpoint import CKPT_META

    saved = read_json(out / CKPT_META, "checkpoint metadata").get("config", {})
    now = cfg.to_dict()
    diff = [k for k in now if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]]
    if diff:
        k = diff[0]
        flag = "--" + k.replace("_", "-")
        raise ValueError(
            f"{out}: the checkpoint was trained with {flag} {saved[k]!r}, this run asks for {now[k]!r}; "
            "resume with the same options or train into another --out"
        )


def build_spec(cfg: TrainConfig, ds: Dataset) -> ModelSpec:
    c, h, w = ds.input_shape
    backbone = cfg.backbone if cfg.backbone != "auto" else ("resnet" if c == 3 and h >= 32 else "mnist_cnn")
    args: dict[str, Any] = {}
    if cfg.width:
        args["width"] = cfg.width
    if backbone == "resnet":
        args["depth"] = cfg.depth
    head_args: dict[str, Any] = {}
    if cfg.head == "lgm":
        head_args = {"variance": cfg.variance, "learn_priors": cfg.learn_priors, "var_floor": cfg.var_floor}
    return ModelSpec(
        backbone=backbone, backbone_args=args, head=cfg.head, head_args=head_args, num_classes=ds.num_classes,
        feat_dim=cfg.feat_dim, input_shape=(c, h, w), mean=ds.mean, std=ds.std,
    )  # fmt: skip


def make_optimizer(model: Classifier, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Three groups: backbone (weight decay), head means/priors (no decay), variances (lr * var_lr_mult)."""
    var_params, head_params, body_params = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("head.log_var_raw"):
            var_params.append(p)
        elif name.startswith("head.") or p.ndim <= 1:
            head_params.append(p)
        else:
            body_params.append(p)
    groups = [
        {"params": body_params, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": head_params, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": var_params, "weight_decay": 0.0, "lr_mult": cfg.var_lr_mult},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate for epoch ``epoch`` (0-based): cosine to 0, step (x0.1 at 50% and 75%), or constant."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
    if cfg.lr_schedule == "step":
        return cfg.lr * (0.1 ** (int(epoch >= cfg.epochs * 0.5) + int(epoch >= cfg.epochs * 0.75)))
    return cfg.lr


@torch.no_grad()
def accuracy(model: Classifier, split: Split, device: torch.device, batch_size: int = 500) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        x = split.x[i : i + batch_size].to(device).float().div_(255.0)
        correct += int((model(x).argmax(1).cpu() == split.y[i : i + batch_size]).sum())
    return correct / max(1, len(split))


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 where the GPU has it, else float16; None (full precision) on the CPU or when disabled."""
    if device.type == "cuda" and enabled:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def _autocast(device: torch.device, enabled: bool):
    dtype = _amp_dtype(device, enabled)
    if dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def train_one_epoch(
    model: torch.nn.Module, core: Classifier, ds: Dataset, optim: torch.optim.Optimizer, cfg: TrainConfig,
    epoch: int, device: torch.device, dist_info: DistInfo, schedule: AlphaSchedule,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, float]:  # fmt: skip
    """One pass over this rank's shard of the training split. Returns mean loss, accuracy and final alpha."""
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    torch.manual_seed(cfg.seed * 100_003 + epoch)
    perm = torch.randperm(len(ds.train), generator=gen)
    perm = perm[dist_info.rank :: dist_info.world_size]  # shard (identical permutation on every rank)
    local_bs = max(2, cfg.batch_size // dist_info.world_size)
    steps = len(perm) // local_bs  # drop the ragged last batch: every rank runs the same number of steps
    steps_per_epoch = steps
    lr = lr_at(cfg, epoch)
    for g in optim.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)
    tot_loss, tot_correct, seen, alpha = 0.0, 0, 0, schedule(epoch * steps_per_epoch)
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=cfg.quiet or not dist_info.is_main,
        leave=False,
    )
    for step in bar:
        idx = perm[step * local_bs : (step + 1) * local_bs]
        x = ds.train.x[idx].to(device, non_blocking=True).float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if cfg.augment:
            x = augment_batch(x, ds.augment, gen)  # random draws on the CPU generator, gather on the device
        y = ds.train.y[idx].to(device, non_blocking=True)
        alpha = schedule(epoch * steps_per_epoch + step)
        with _autocast(device, cfg.amp):
            logits, feats = model(x, y, alpha, return_features=True)
        if core.is_lgm:
            assert isinstance(core.head, LGMHead)
            loss, _, _ = lgm_loss(core.head, feats.float(), logits, y, cfg.lam, cfg.lkd_form)  # type: ignore[arg-type]
        else:
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optim.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():  # float16 autocast: scale against gradient underflow
            scaler.scale(loss).backward()
            scaler.step(optim)
            scaler.update()
        else:
            loss.backward()
            optim.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
        tot_loss += loss.item() * len(y)
        tot_correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.4f}", alpha=f"{alpha:.3f}")
    tot_loss, tot_correct, seen = all_reduce_sum(
        [tot_loss, float(tot_correct), float(seen)], dist_info, device
    )
    average_buffers(core, dist_info)
    return {
        "loss": tot_loss / max(1, seen),
        "train_accuracy": tot_correct / max(1, seen),
        "alpha": alpha,
        "lr": lr,
    }


def start_run(
    cfg: TrainConfig, ds: Dataset, device: torch.device
) -> tuple[Classifier, torch.optim.Optimizer, AlphaSchedule, torch.amp.GradScaler]:
    """What a run starts from: the model (initialised from ``cfg.seed``), its optimiser, the margin schedule
    and the gradient scaler (enabled only for float16 autocast on CUDA)."""
    torch.manual_seed(cfg.seed)
    core = Classifier(build_spec(cfg, ds)).to(device)
    optim = make_optimizer(core, cfg)
    schedule = AlphaSchedule(cfg.alpha, cfg.alpha_factor, cfg.alpha_every, cfg.alpha_cap)
    scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(device, cfg.amp) == torch.float16)
    return core, optim, schedule, scaler


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Train and write the artifact into ``out_dir``. ``stop_after`` ends after that many epochs in total
    without writing the artifact (used by tests to simulate a run killed mid-way). Returns model.json's dict."""
    cfg.validate()
    out = Path(out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, 0)
    dist_info = init_distributed(device)
    if dist_info.enabled and device.type == "cuda":
        if device.index is None or cfg.device == "auto":  # one GPU per local rank unless pinned (cuda:N)
            device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        ds = load_dataset(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.image_size)
        core, optim, schedule, scaler = start_run(cfg, ds, device)
        model: torch.nn.Module = core
        if dist_info.enabled:
            model = DistributedDataParallel(
                core, device_ids=[device.index] if device.type == "cuda" else None
            )
        start, history = 0, []
        if resume and has_checkpoint(out):
            check_resumable(out, cfg)
            info = load_checkpoint(out, core, optim)
            start, history = int(info["epoch"]), list(info["history"])
            if dist_info.is_main and not cfg.quiet:
                print(f"resumed from {out}/checkpoint at epoch {start}/{cfg.epochs}", flush=True)
        for epoch in range(start, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                return {"stopped_at_epoch": epoch}
            t0 = time.perf_counter()
            stats = train_one_epoch(model, core, ds, optim, cfg, epoch, device, dist_info, schedule, scaler)
            stats["seconds"] = time.perf_counter() - t0
            stats["epoch"] = epoch + 1
            stats["calibration_accuracy"] = accuracy(core, ds.calibration, device)
            history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()})
            if dist_info.is_main:
                save_checkpoint(
                    out, core, optim, {"epoch": epoch + 1, "history": history, "config": cfg.to_dict()}
                )
                if not cfg.quiet:
                    print(
                        f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss']:.4f}  train acc {stats['train_accuracy']:.4f}"
                        f"  calib acc {stats['calibration_accuracy']:.4f}  alpha {stats['alpha']:.3f}  {stats['seconds']:.1f}s",
                        flush=True,
                    )
            barrier(dist_info)
        meta: dict[str, Any] = {}
        if dist_info.is_main:
            metrics = {
                "test_accuracy": accuracy(core, ds.test, device),
                "calibration_accuracy": accuracy(core, ds.calibration, device),
                "train_accuracy": accuracy(core, ds.train, device),
                "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history)),
            }
            meta = {
                "dataset": {"name": ds.name, "root": cfg.data_root, "split_seed": cfg.split_seed, "image_size": cfg.image_size,
                            "class_names": ds.class_names, "sizes": {"train": len(ds.train), "calibration": len(ds.calibration), "test": len(ds.test)}},
                "lgm": {k: getattr(cfg, k) for k in LGM_KEYS} if cfg.head == "lgm" else None,
                "train": cfg.to_dict(),
                "world_size": dist_info.world_size,
                "device": str(device),
                "history": history,
                "metrics": {k: round(v, 6) for k, v in metrics.items()},
            }  # fmt: skip
            meta = save_artifact(out, core, meta)
        barrier(dist_info)
        return meta
    finally:
        shutdown(dist_info)
