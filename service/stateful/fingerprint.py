"""Probabilistic content fingerprints of images, after Blacklight (Li, Shan, Wenger, Zhang, Zheng, Zhao, USENIX
Security 2022, "Blacklight: Scalable Defense for Neural Networks against Query-Based Black-Box Attacks").

An image's pixels are quantised to ``levels + 1`` values (round(levels * x), so black and white sit in the middle
of their bins and small noise never moves them), every ``patch`` x ``patch`` window (all channels, stride 1) is
hashed, and the fingerprint is the ``top_k`` largest distinct hashes. Two images whose fingerprints share many
hashes share many identical quantised patches: a query attack's successive queries (one image plus small steps)
share most of them, distinct images few. Which patches survive the top-k cut depends only on the hash values,
so it is the same for near-identical images (the "probabilistic" part: a sample both images agree to keep).

Blacklight hashes windows of the flattened pixel array; on 28x28 digits those windows are 1-D runs of a row
(mostly background with the edge of a stroke) that distinct digits share, while 2-D patches are specific to a
digit's shape. Measured on 600 real digits (docs/query-attacks.md): flattened 20-pixel windows, distinct pairs
share up to 37 of 50 hashes; 4x4 patches at most 12, while a Square-attack step still shares a median of 44.

The hash: a keyed linear combination of the window's values (wrapping 64-bit arithmetic) passed through the
splitmix64 finaliser (Steele, Lea, Flood, OOPSLA 2014), which spreads near-equal inputs over the whole range so
that the top-k cut is a pseudo-random sample. Vectorised in numpy over a whole batch. ``key`` makes the
fingerprints unpredictable without the server's key (no cryptographic strength is claimed).

Sliding windows make the fingerprint of an image with a blank border invariant to shifts by whole pixels (a
shift moves patches, it does not change them), which defeats random translations as query blinding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class FingerprintConfig:
    """Blacklight's parameters. The defaults are the ones measured for 28x28 digits (docs/query-attacks.md)."""

    levels: int = 5  # quantisation: round(levels * x), x in [0, 1] (5: steps of 0.2, about 51 of 255)
    patch: int = 4  # side of the hashed square windows (pixels)
    top_k: int = 50  # hashes kept per image
    key: int = 0x5EED  # mixes into every hash (set the same on every replica)


class Fingerprinter:
    """``Fingerprinter(cfg)(x)``: (N, C, H, W) or (N, H, W) float images in [0, 1] -> N int64 arrays of at
    most ``top_k`` distinct hashes each, ascending (fewer when an image has fewer distinct windows: a blank
    image has one)."""

    def __init__(self, cfg: FingerprintConfig | None = None) -> None:
        self.cfg = cfg or FingerprintConfig()
        self._coef: dict[int, np.ndarray] = {}  # per window size (it depends on the channel count)
        self._salt = np.uint64(np.random.default_rng(self.cfg.key).integers(0, 2**63, dtype=np.uint64))

    def _coefficients(self, size: int) -> np.ndarray:
        """Odd coefficients (each invertible mod 2^64: windows differing in one value never collide)."""
        if size not in self._coef:
            rng = np.random.default_rng([self.cfg.key, size])
            self._coef[size] = rng.integers(0, 2**62, size=size, dtype=np.uint64) * np.uint64(2) + np.uint64(
                1
            )
        return self._coef[size]

    def quantise(self, x: np.ndarray) -> np.ndarray:
        """[0, 1] floats (N, C, H, W) -> integer levels round(levels * x) as uint64, same shape."""
        return np.rint(np.clip(x, 0.0, 1.0) * self.cfg.levels).astype(np.uint64)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        c = self.cfg
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None]
        n, ch, h, w = x.shape
        if h < c.patch or w < c.patch:
            raise ValueError(f"images of {h}x{w} pixels are smaller than the {c.patch}x{c.patch} patch")
        q = self.quantise(x)  # (N, C, H, W)
        p, oh, ow = c.patch, h - c.patch + 1, w - c.patch + 1
        coef = self._coefficients(ch * p * p).reshape(ch, p, p)
        # sum of coef[k, i, j] * q[k, y + i, x + j] over each window: one shifted multiply-add per window
        # position (p * p of them, vectorised over the batch and the channels) instead of a copy of every window
        acc = np.zeros((n, oh, ow), np.uint64)
        with np.errstate(over="ignore"):
            for k in range(ch):
                for i in range(p):
                    for j in range(p):
                        acc += q[:, k, i : i + oh, j : j + ow] * coef[k, i, j]
            hashes = np.sort(_splitmix64(acc.reshape(n, -1) + self._salt), axis=1)  # (N, windows), ascending
        # the largest distinct hashes, as signed 64-bit integers (what SQLite and Redis store)
        distinct = np.ones(hashes.shape, bool)
        distinct[:, 1:] = hashes[:, 1:] != hashes[:, :-1]
        return [row[keep][-c.top_k :].view(np.int64) for row, keep in zip(hashes, distinct, strict=True)]


def digest(x: np.ndarray) -> list[bytes]:
    """An exact-content digest per image (16 bytes of BLAKE2b over its float32 pixels): re-sending the very same
    image teaches an attacker nothing (the model is deterministic), so exact repeats are told apart from
    near-duplicates."""
    import hashlib

    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in a]


def shared(a: np.ndarray, b: np.ndarray) -> int:
    """Hashes two fingerprints (rows of ``Fingerprinter``'s output) have in common."""
    return len(np.intersect1d(a, b))
