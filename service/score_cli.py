"""``lgm score DIR IMAGE_OR_FOLDER...``: offline screening without a server.

Every image (files given by name, and image files found under the folders given, recursively, in sorted order)
is converted by the service's own rule (``service/images.py``), scored in batches by the same detector as
``/v1/predict``, and printed as one JSON line with the fields of a ``/v1/predict`` prediction plus ``file``.
A file that cannot be read or decoded is named on stderr and skipped; the rest are still scored, and the exit
status is then 1. A progress bar goes to stderr when there are many images.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm"}
PROGRESS_FROM = 200  # images: show a progress bar from this many


def image_files(paths: list[str]) -> Iterator[Path]:
    """The files named, and the image files (by suffix) under the folders named, each folder sorted."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p  # a missing file is reported when it is read


def cmd_score(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from detector.scoring import Detector
    from service.engine import BatchResult
    from service.errors import APIError
    from service.images import decode_image
    from service.payloads import prediction_dicts

    if args.batch_size < 1 or args.top_k < 1:
        raise ValueError("--batch-size and --top-k must be >= 1")
    det = Detector.load(args.artifact, args.device)  # one line naming `lgm calibrate` when it cannot
    files = list(image_files(args.images))
    if not files:
        raise ValueError(f"no image files under {' '.join(args.images)}")
    failed = 0
    bar = tqdm(
        total=len(files), unit="img", file=sys.stderr, disable=args.quiet or len(files) < PROGRESS_FROM
    )
    for start in range(0, len(files), args.batch_size):
        names, arrays = [], []
        for f in files[start : start + args.batch_size]:
            try:
                arrays.append(decode_image(f.read_bytes(), det.input_shape, args.max_image_pixels, str(f)))
                names.append(str(f))
            except APIError as exc:
                failed += 1
                print(f"lgm score: error: {exc.message}", file=sys.stderr)
            except OSError as exc:
                failed += 1
                print(f"lgm score: error: {f}: {exc.strerror or exc}", file=sys.stderr)
        if arrays:
            with torch.inference_mode():
                res = BatchResult.from_scores(det.score(torch.from_numpy(np.stack(arrays))))
            for name, pred in zip(names, prediction_dicts(res, det.class_names, args.top_k), strict=True):
                print(json.dumps({"file": name, **pred}))
            sys.stdout.flush()
        bar.update(min(args.batch_size, len(files) - start))
    bar.close()
    if failed:
        print(f"lgm score: {failed} of {len(files)} files could not be scored", file=sys.stderr)
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score image files offline: one JSON line per image, as /v1/predict answers",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("artifact", help="calibrated artifact folder")
    p.add_argument("images", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=3, help="classes listed in top_k")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image, width x height")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)
