"""Write the CIFAR-10 sample images that the README and the docs post to the service.

- ``cifar10_<class>.png``: the first image of the official CIFAR-10 test set (the ``test/`` folder of a CIFAR-10
  image-folder copy, read by ``training.data.load_dataset("folder", ROOT)``, in sorted path order) that
  ARTIFACT's network classifies correctly, saved losslessly as the 32x32 RGB pixels the model sees.
- ``cifar10_<class>_adversarial.png``: that image after the project's own untargeted L-inf PGD (Madry et al.,
  ICLR 2018, ``training.adversarial.pgd_linf``: 40 signed-gradient steps of 2.5 eps / 40 from a random start,
  eps 8/255 in [0, 1] pixels), ascending the cross-entropy in float64, saved in 8 bits within the same ball (at
  most 8 levels from the original per channel) and checked on the PNG as saved: the first test image whose
  attack succeeds there is the one written. Whether the detector flags it is printed, not chosen: on a model
  without adversarial training it often does not (docs/training.md, "Natural images").

    python examples/make_cifar10.py --data-root CIFAR10_FOLDER [--artifact models/cifar10] [--out examples]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector import Detector  # noqa: E402
from training.adversarial import pgd_linf  # noqa: E402
from training.artifacts import atomic_write_bytes  # noqa: E402
from training.data import load_dataset  # noqa: E402

EPS, STEPS, SEED = 8 / 255, 40, 0


def png(chw: np.ndarray) -> bytes:
    """uint8 (3, H, W) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(chw.transpose(1, 2, 0), mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def read_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> float (1, 3, H, W) in [0, 1], as the service decodes an RGB image of the model's size."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data-root", required=True, help="CIFAR-10 folder with train/<class>/ and test/<class>/"
    )
    ap.add_argument("--artifact", default="models/cifar10", help="calibrated model to attack")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder to write to")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    test = load_dataset("folder", args.data_root).test  # the test folder, whole, in sorted path order
    det = Detector.load(args.artifact, device="cpu")
    model = det.model
    levels = int(EPS * 255)  # 8 bits a channel, still within eps: at most 8 levels away
    for i in range(len(test)):
        clean8 = test.x[i].numpy()  # uint8 (3, 32, 32)
        label = int(test.y[i])
        x = read_png(png(clean8))
        if int(det.score(x).pred[0]) != label:
            continue
        y = torch.tensor([label])

        def loss(xa: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(model(xa).double(), y, reduction="sum")

        x_adv = pgd_linf(
            loss, x, EPS, STEPS, 2.5 * EPS / STEPS, generator=torch.Generator().manual_seed(SEED)
        )
        clean = torch.from_numpy(clean8).int()
        q = (x_adv[0] * 255.0).round().int().clamp(clean - levels, clean + levels).clamp(0, 255)
        data = png(q.to(torch.uint8).numpy())
        s = det.score(read_png(data))
        if int(s.pred[0]) != label:
            break
    else:
        raise SystemExit(f"PGD succeeded on no correctly classified test image against {args.artifact}")
    name = det.class_names[label]
    clean_s = det.score(x)
    atomic_write_bytes(args.out / f"cifar10_{name}.png", png(clean8))
    print(
        f"cifar10_{name}.png: test image {i} (sorted path order), label {name}, read as "
        f"{det.class_names[int(clean_s.pred[0])]}, flagged {bool(clean_s.is_adversarial[0])}, "
        f"abnormality {float(clean_s.abnormality[0]):.3f}"
    )
    atomic_write_bytes(args.out / f"cifar10_{name}_adversarial.png", data)
    pred = int(s.pred[0])
    linf = float((read_png(data) - x).abs().max())
    print(
        f"cifar10_{name}_adversarial.png: read as {det.class_names[pred]} (confidence "
        f"{float(s.probs[0, pred]):.3f}), flagged {bool(s.is_adversarial[0])}, abnormality "
        f"{float(s.abnormality[0]):.3f}, L-inf {linf:.4f} ({round(linf * 255)}/255)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
