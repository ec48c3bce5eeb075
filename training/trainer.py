"""Train an L-GM (or softmax) classifier, checkpoint every epoch, write the model artifact.

``train(cfg, out)`` is the whole run; :class:`Run` is its parts (set-up, resume, one epoch, the epoch loop and the
artifact), for callers that drive epochs themselves (``bench/train.py`` times them)::

    with Run(cfg, out) as run:
        run.resume()          # from out/checkpoint.* if present
        meta = run.fit()      # epochs start..cfg.epochs, then model.safetensors + model.json

Determinism: every random draw of epoch e (shuffle, augmentation, the adversarial attack's random start) comes
from generators seeded by (seed, e), and the learning rate, margin and adversarial eps are pure functions of
(epoch, iteration). So a run resumed from the checkpoint of epoch e replays epochs e+1.. exactly as an
uninterrupted run would (on the CPU, at a fixed thread count).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.adversarial import AdversarialObjective, eps_at
from training.artifacts import read_json, save_artifact
from training.best import BestKeeper, heldout_pgd_accuracy
from training.card import final_metrics, model_card
from training.checkpoint import CKPT_META, has_checkpoint, load_checkpoint, save_checkpoint
from training.config import RUN_ONLY, TrainConfig
from training.data import Dataset, augment_batch, load_dataset
from training.distributed import (
    all_reduce_sum,
    average_buffers,
    barrier,
    init_distributed,
    resolve_device,
    shutdown,
)
from training.loss import AlphaSchedule
from training.model import Classifier, ModelSpec, accuracy
from training.optim import lr_at, make_optimizer, set_lr

# options a resumed run may change; any other difference would not end in the state of an uninterrupted run
RESUME_MAY_CHANGE = ("epochs", "data_root", *RUN_ONLY)


def check_resumable(out: Path, cfg: TrainConfig) -> None:
    """Raise ValueError (one line) when the checkpoint in ``out`` was trained with other options."""
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
        args["feature_norm"] = True  # written out, so the artifact says which ResNet it is
    head_args: dict[str, Any] = {}
    if cfg.head == "lgm":
        head_args = {"variance": cfg.variance, "learn_priors": cfg.learn_priors, "var_floor": cfg.var_floor}
        if cfg.means_init != 1.0:  # written only when set, so earlier artifacts' specs stay as they were
            head_args["init_scale"] = cfg.means_init
    return ModelSpec(
        backbone=backbone,
        backbone_args=args,
        head=cfg.head,
        head_args=head_args,
        num_classes=ds.num_classes,
        feat_dim=cfg.feat_dim,
        input_shape=(c, h, w),
        mean=ds.mean,
        std=ds.std,
    )


def amp_dtype(device: torch.device, enabled: bool, cpu_bf16: bool = False) -> torch.dtype | None:
    """Autocast's dtype: on CUDA (``enabled``) bfloat16 where the GPU has it, else float16; on the CPU
    bfloat16 only when asked (``cpu_bf16``); None means full precision."""
    if device.type == "cuda" and enabled:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    return None


class Run:
    """One training run into ``out_dir``: device, process group, data, model, optimiser, schedules.

    ``ds`` replaces the dataset named by ``cfg`` (benchmarks pass synthetic data). Under torchrun every rank
    builds a Run; rank 0 alone writes checkpoints and the artifact."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, ds: Dataset | None = None) -> None:
        cfg.validate()
        self.cfg, self.out = cfg, Path(out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = resolve_device(cfg.device, 0)
        self.dist = init_distributed(device)
        if self.dist.enabled and device.type == "cuda":
            if device.index is None or cfg.device == "auto":  # one GPU per local rank unless pinned (cuda:N)
                device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        try:
            self.ds = (
                ds
                if ds is not None
                else load_dataset(cfg.dataset, cfg.data_root, cfg.split_seed, cfg.image_size)
            )
            torch.manual_seed(cfg.seed)
            self.core = Classifier(build_spec(cfg, self.ds)).to(device)
            self.optim = make_optimizer(self.core, cfg)
            self.schedule = AlphaSchedule(cfg.alpha, cfg.alpha_factor, cfg.alpha_every, cfg.alpha_cap)
            if cfg.channels_last:  # convolutions in NHWC; the inputs follow in train_epoch
                self.core.to(memory_format=torch.channels_last)
            self.amp_dtype = amp_dtype(device, cfg.amp, cfg.cpu_bf16)
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
            self.model: torch.nn.Module = self.core
            if self.dist.enabled:
                ids = [device.index] if device.type == "cuda" else None
                self.model = DistributedDataParallel(self.core, device_ids=ids)
            self.objective = AdversarialObjective(cfg, self.model, self.core, self.autocast)
        except BaseException:
            shutdown(self.dist)
            raise
        self.start_epoch, self.history = 0, []

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutdown(self.dist)

    def autocast(self):
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return torch.autocast("cpu", enabled=False)

    def log(self, msg: str) -> None:
        if self.dist.is_main and not self.cfg.quiet:
            print(msg, flush=True)

    def resume(self) -> bool:
        """Continue from ``out/checkpoint.*`` when present (refused when trained with other options)."""
        if not has_checkpoint(self.out):
            return False
        check_resumable(self.out, self.cfg)
        info = load_checkpoint(self.out, self.core, self.optim)
        self.start_epoch, self.history = int(info["epoch"]), list(info["history"])
        self.log(f"resumed from {self.out}/checkpoint at epoch {self.start_epoch}/{self.cfg.epochs}")
        return True

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard of the training split. Returns mean loss, accuracy, alpha and lr."""
        cfg, ds, device, dist_info = self.cfg, self.ds, self.device, self.dist
        self.model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        perm = torch.randperm(len(ds.train), generator=gen)
        perm = perm[dist_info.rank :: dist_info.world_size]  # shard (identical permutation on every rank)
        local_bs = max(2, cfg.batch_size // dist_info.world_size)
        steps = len(perm) // local_bs  # drop the ragged last batch: every rank runs the same number of steps
        lr = lr_at(cfg, epoch)
        set_lr(self.optim, lr)
        tot_loss, tot_correct, seen = 0.0, 0, 0
        alpha, eps = self.schedule(epoch * steps), eps_at(cfg, epoch * steps, steps)
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
                x = augment_batch(
                    x, ds.augment, gen
                )  # random draws on the CPU generator, gather on the device
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = ds.train.y[idx].to(device, non_blocking=True)
            alpha, eps = self.schedule(epoch * steps + step), eps_at(cfg, epoch * steps + step, steps)
            loss, logits = self.objective(x, y, alpha, eps, gen)
            self.optim.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():  # float16 autocast: scale against gradient underflow
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optim)
                self.scaler.update()
            else:
                loss.backward()
                self.optim.step()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step}")
            tot_loss += loss.item() * len(y)
            tot_correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(
                loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.4f}", alpha=f"{alpha:.3f}"
            )
        tot_loss, tot_correct, seen = all_reduce_sum(
            [tot_loss, float(tot_correct), float(seen)], dist_info, device
        )
        average_buffers(self.core, dist_info)
        stats = {
            "loss": tot_loss / max(1, seen),
            "train_accuracy": tot_correct / max(1, seen),
            "alpha": alpha,
            "lr": lr,
        }
        if cfg.adversarial != "none":
            stats["eps"] = eps
        return stats

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Epochs ``start_epoch``..``cfg.epochs`` with a checkpoint after each, then the artifact. Returns
        model.json's dict (empty on ranks other than 0); ``{"stopped_at_epoch": e}`` when ``stop_after`` ends
        the run early without an artifact (tests simulate a killed run with it)."""
        cfg = self.cfg
        keeper = BestKeeper(self.out) if cfg.keep_best == "pgd" and self.dist.is_main else None
        if keeper is not None and self.start_epoch == 0:
            keeper.clear()  # a fresh run: an earlier run's best in this folder is not this run's
        for epoch in range(self.start_epoch, cfg.epochs):
            if stop_after is not None and epoch >= stop_after:
                return {"stopped_at_epoch": epoch}
            t0 = time.perf_counter()
            stats: dict[str, Any] = dict(self.train_epoch(epoch))
            stats["seconds"] = time.perf_counter() - t0
            stats["epoch"] = epoch + 1
            stats["calibration_accuracy"] = accuracy(self.core, self.ds.calibration, self.device)
            if keeper is not None:  # held-out robustness, then keep these weights if they are the best so far
                stats["heldout_pgd_accuracy"] = heldout_pgd_accuracy(
                    self.core,
                    self.ds.calibration,
                    cfg.adv_eps,
                    cfg.best_check_steps,
                    cfg.best_check_inputs,
                    self.device,
                )
                keeper.offer(epoch + 1, round(stats["heldout_pgd_accuracy"], 6), self.core)
            self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in stats.items()})
            if self.dist.is_main:
                info = {"epoch": epoch + 1, "history": self.history, "config": cfg.to_dict()}
                save_checkpoint(self.out, self.core, self.optim, info)
                eps = f"  eps {stats['eps']:.3f}" if "eps" in stats else ""
                if "heldout_pgd_accuracy" in stats:
                    eps += f"  held-out PGD acc {stats['heldout_pgd_accuracy']:.4f}"
                self.log(
                    f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['loss']:.4f}  train acc {stats['train_accuracy']:.4f}"
                    f"  calib acc {stats['calibration_accuracy']:.4f}  alpha {stats['alpha']:.3f}{eps}"
                    f"  {stats['seconds']:.1f}s"
                )
            barrier(self.dist)
        meta: dict[str, Any] = {}
        if self.dist.is_main:
            kept = keeper.restore(self.core) if keeper is not None else None
            metrics = final_metrics(self.core, self.ds, self.device, self.history)
            if kept is not None:
                metrics["kept_epoch"] = kept["epoch"]
            card = model_card(cfg, self.ds, self.history, metrics, self.dist.world_size, self.device)
            meta = save_artifact(self.out, self.core, card)
        barrier(self.dist)
        return meta


def train(
    cfg: TrainConfig, out_dir: str | Path, resume: bool = False, stop_after: int | None = None
) -> dict[str, Any]:
    """Train and write the artifact into ``out_dir``. ``stop_after`` ends after that many epochs in total
    without writing the artifact (used by tests to simulate a run killed mid-way). Returns model.json's dict."""
    with Run(cfg, out_dir) as run:
        if resume:
            run.resume()
        return run.fit(stop_after)
