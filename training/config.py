"""The training configuration: one dataclass, saved resolved into model.json beside every artifact.

Each field carries its own help, ``lgm train --help`` group, choices and bounds (see ``training/configargs.py``,
which builds the command line from them). Why the defaults are what they are, with the measurements behind
them: docs/training.md, section "Why the defaults are what they are".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import partial
from typing import Any

from training.backbones import BACKBONES
from training.configargs import check_options, names_in_group, option
from training.data import DATASETS
from training.lgm import VARIANCE_MODES
from training.loss import LKD_FORMS

ADVERSARIAL_METHODS = ("none", "pgd", "trades")
ADV_LKD_MODES = ("pull", "push")

_data = partial(option, group="data")
_model = partial(option, group="model")
_lgm = partial(option, group="L-GM")
_adv = partial(option, group="adversarial training")
_opt = partial(option, group="optimisation")
_run = partial(option, group="run")


@dataclass
class TrainConfig:
    dataset: str = _data(
        "mnist5k",
        "mnist5k | digits (embedded) | mnist | fashion-mnist | cifar10 | cifar100 | folder (need --data-root)",
        choices=DATASETS,
    )
    data_root: str | None = _data(None, "folder holding the dataset's files")
    image_size: int | None = _data(None, "resize image-folder images to this square size", ge=1)
    split_seed: int = _data(0, "seed of the train / calibration / test split")

    backbone: str = _model("auto", "auto | mnist_cnn | resnet", choices=("auto", *BACKBONES))
    feat_dim: int = _model(32, "feature dimension D (2 for plots)", ge=2)
    width: int = _model(0, "channels of the first stage (0: backbone default)", ge=0)
    depth: int = _model(20, "ResNet depth, 6n+2")
    head: str = _model("lgm", "lgm | softmax (a like-for-like baseline)", choices=("lgm", "softmax"))

    variance: str = _lgm(
        "fixed", "diagonal | isotropic | fixed (held at 1.0, as the official code)", choices=VARIANCE_MODES
    )
    lkd_form: str = _lgm(
        "center", "paper (d_y + 0.5 log|Lambda_y|) | center (0.5 ||x - mu_y||^2)", choices=LKD_FORMS
    )
    lam: float = _lgm(1.0, "lambda, weight of the likelihood term", ge=0)
    alpha: float = _lgm(0.1, "margin alpha (initial value when stepping up)", ge=0)
    alpha_factor: float = _lgm(2.0, "step-up factor", gt=0)
    alpha_every: int = _lgm(100, "step up every N iterations (0: constant alpha)", ge=0)
    alpha_cap: float = _lgm(0.3, "largest alpha", ge=0)
    learn_priors: bool = _lgm(False, "learn class priors pi_k")
    var_floor: float = _lgm(1e-3, "variance floor", gt=0, lt=1)
    var_lr_mult: float = _lgm(0.1, "learning-rate multiplier of the variances", ge=0)
    means_init: float = _lgm(
        1.0,
        "the class means start as this times N(0, I) (small, e.g. 0.1: near-uniform logits at the start, as a "
        "softmax layer's; the features of the CIFAR ResNet have unit variance per dimension)",
        gt=0,
    )

    epochs: int = _opt(10, "epochs", ge=1)
    batch_size: int = _opt(64, "global batch size (split across torchrun ranks)", ge=2)
    optimizer: str = _opt("adam", "adam (AdamW) | sgd (Nesterov momentum 0.9)", choices=("adam", "sgd"))
    lr: float = _opt(2e-3, "peak learning rate", gt=0)
    weight_decay: float = _opt(5e-4, "weight decay of the backbone", ge=0)
    lr_schedule: str = _opt("cosine", "cosine | step | none", choices=("cosine", "step", "none"))
    augment: bool = _opt(True, "training augmentation (shifts for digits; pad-crop-flip for CIFAR)")

    adversarial: str = _adv(
        "none",
        "none | pgd (train on PGD examples made against the current network, Madry et al. 2018) | trades "
        "(clean loss + beta * KL(p(x) || p(x')) at the PGD point x', Zhang et al. 2019)",
        choices=ADVERSARIAL_METHODS,
    )
    adv_eps: float = _adv(
        0.3, "L-inf radius in [0, 1] pixels (0.3: the usual MNIST budget; CIFAR: 8/255)", gt=0, le=1
    )
    adv_steps: int = _adv(10, "PGD steps per training example", ge=1, le=1000)
    adv_step_frac: float = _adv(
        2.5, "PGD step size = adv_step_frac * eps / adv_steps (Madry et al.: 2.5)", gt=0, le=10
    )
    adv_start_frac: float = _adv(
        1.0,
        "random start uniform in +-adv_start_frac * eps (N-FGSM, de Jorge et al. 2022: 2, with --adv-steps 1 "
        "--adv-step-frac 1 --no-adv-project)",
        gt=0,
        le=10,
    )
    adv_project: bool = _adv(
        True, "project the training examples onto the eps-ball (off: only onto [0, 1] pixels, as N-FGSM)"
    )
    adv_warmup: int = _adv(3, "epochs over which eps grows linearly from 0 to --adv-eps", ge=0)
    adv_clean_fraction: float = _adv(
        0.5, "pgd: fraction of each batch kept clean; the rest is replaced by its PGD examples", ge=0, lt=1
    )
    adv_lkd: str = _adv(
        "push",
        "likelihood term of adversarial features: pull (onto the true class's Gaussian, as clean ones) | push "
        "(also out of the nearest wrong class's)",
        choices=ADV_LKD_MODES,
    )
    trades_beta: float = _adv(6.0, "trades: weight of the KL term", ge=0)
    keep_best: str = _adv(
        "last",
        "last (the final epoch's weights) | pgd (the epoch with the highest PGD accuracy on held-out calibration "
        "inputs, against robust overfitting: Rice et al. 2020; training/best.py)",
        choices=("last", "pgd"),
    )
    best_check_inputs: int = _adv(500, "keep-best pgd: calibration inputs checked after each epoch", ge=1)
    best_check_steps: int = _adv(
        10, "keep-best pgd: PGD steps of the check, at the full --adv-eps", ge=1, le=1000
    )

    seed: int = _run(0, "seed of initialisation, shuffling and augmentation")
    device: str = _run("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    amp: bool = _run(True, "mixed precision on CUDA")
    cpu_bf16: bool = _run(
        False,
        "bfloat16 autocast on the CPU (the head and the loss stay float32): faster on a CPU with AVX512-BF16 "
        "or AMX (bench/training/cpu_speed.py measures it), rounded differently from a float32 run",
    )
    channels_last: bool = _run(
        False,
        "channels-last memory layout for the convolutions: faster on the CPU (bench/training/cpu_speed.py), "
        "the same function up to float rounding",
    )
    threads: int = _run(
        0,
        "torch CPU threads (0: torch default); a CPU run is bit-identical for a seed at a fixed count",
        ge=0,
    )
    quiet: bool = _run(False, "no progress bars or per-epoch lines")

    def validate(self) -> None:
        """Raise ValueError with one line naming the flag of the first option out of range."""
        check_options(self)
        if self.keep_best == "pgd" and self.adversarial == "none":
            raise ValueError("--keep-best pgd needs adversarial training (--adversarial pgd or trades)")
        if self.adversarial != "none" and self.adv_warmup >= self.epochs:
            raise ValueError(
                f"--adv-warmup must be below --epochs (eps would never reach --adv-eps), got {self.adv_warmup}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Settings of where and how loudly a run happens, not of what it learns.
RUN_ONLY = ("device", "amp", "cpu_bf16", "channels_last", "threads", "quiet")
# The L-GM head's settings (a softmax head ignores them); model.json lists them under "lgm".
LGM_KEYS = names_in_group(TrainConfig, "L-GM")
# Adversarial training's settings; model.json lists them under "adversarial" (None when not used).
ADV_KEYS = names_in_group(TrainConfig, "adversarial training")
