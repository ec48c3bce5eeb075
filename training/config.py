"""The training configuration: one dataclass, saved resolved into model.json beside every artifact."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainConfig:
    # data
    dataset: str = "mnist5k"
    data_root: str | None = None
    image_size: int | None = None  # image folders only
    split_seed: int = 0
    # model
    backbone: str = "auto"  # auto: mnist_cnn for grey images, resnet for colour
    feat_dim: int = 32
    width: int = 0  # 0: the backbone's default (32 for mnist_cnn, 16 for resnet)
    depth: int = 20  # resnet only
    head: str = "lgm"  # lgm | softmax
    # L-GM
    variance: str = "fixed"  # diagonal | isotropic | fixed
    lkd_form: str = "center"  # paper | center
    lam: float = 1.0  # lambda, weight of the likelihood term
    alpha: float = 0.1  # margin (initial value under step-up)
    alpha_factor: float = 2.0
    alpha_every: int = 500  # iterations; 0 keeps alpha constant
    alpha_cap: float = 0.3
    learn_priors: bool = False
    var_floor: float = 1e-3
    var_lr_mult: float = 0.1
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 2e-3
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"  # cosine | step | none
    augment: bool = True
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision on CUDA only
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
