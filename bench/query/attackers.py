"""The query attackers of bench/query/attacks.py: what each sends through the API (bench/query/oracle.py's
``Oracle``), with no access to the weights.

- ``run_square``: Square (Andriushchenko et al. 2020, ART's ``SquareAttack``, L-inf) on the returned probabilities;
- ``run_hsj``: HopSkipJump (Chen, Jordan & Wainwright 2020, ART's ``HopSkipJump``, L-inf) on the returned label,
  started from the nearest other-class digit the API labels differently and leaves unflagged;
- ``blinding``: query blinding (Chen, Carlini & Wagner 2020), uniform noise on every query within the budget;
- ``oars``: a simplified Oracle-guided Adaptive Rejection Sampling (Feng et al. 2023) that resamples the noise
  until an exact local copy of the defence (``would_match``) says the query is no near-duplicate.
"""

from __future__ import annotations

import contextlib

import numpy as np

from bench.query.oracle import Budget, HistorySim, Oracle
from service.settings import ServeSettings
from service.stateful.fingerprint import Fingerprinter


def run_square(oracle: Oracle, x0: np.ndarray, y: int, budget: int, eps: float) -> None:
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    clf = BlackBoxClassifierNeuralNetwork(oracle, x0.shape, oracle.api.k, clip_values=(0.0, 1.0))
    attack = SquareAttack(clf, norm=np.inf, eps=eps, max_iter=budget, p_init=0.8, batch_size=1, verbose=False)
    with contextlib.suppress(Budget):
        attack.generate(x0[None], y=np.eye(oracle.api.k, dtype=np.float32)[[y]])


def run_hsj(oracle: Oracle, x0: np.ndarray, y: int, pool: tuple[np.ndarray, np.ndarray]) -> None:
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    px, py = pool
    order = np.argsort(((px - x0) ** 2).reshape(len(px), -1).sum(1))
    init = None
    try:
        for i in order[
            :20
        ]:  # the nearest other-class digits, until the API labels one differently, unflagged
            if py[i] == y:
                continue
            if int(np.argmax(oracle(px[i][None])[0])) != y:
                init = px[i]
                break
        if init is None:
            return
        clf = BlackBoxClassifier(oracle, x0.shape, oracle.api.k, clip_values=(0.0, 1.0))
        attack = HopSkipJump(
            clf,
            norm=np.inf,
            max_iter=100,
            max_eval=500,
            init_eval=50,
            init_size=100,
            batch_size=64,
            verbose=False,
        )
        attack.generate(x0[None], y=np.array([y]), x_adv_init=init[None])
    except Budget:
        pass


def blinding(b: float, rng: np.random.Generator):
    """Query blinding: uniform noise in [-b, b] on every query, projected back into the budget around x0."""

    def transform(img: np.ndarray, oracle: Oracle) -> np.ndarray:
        z = img + rng.uniform(-b, b, img.shape).astype(np.float32)
        return np.clip(np.clip(z, oracle.x0 - oracle.eps, oracle.x0 + oracle.eps), 0.0, 1.0)

    return transform


def oars(fp: Fingerprinter, settings: ServeSettings, rng: np.random.Generator):
    """Simplified OARS: resample blinding noise, growing, until an exact local copy of the defence says the
    query is not a near-duplicate of the client's earlier ones (at most 8 tries; then send the last)."""

    def transform(img: np.ndarray, oracle: Oracle) -> np.ndarray:
        sim = oracle.__dict__.setdefault(
            "sim", HistorySim(fp, settings.query_match_hashes, settings.query_flag_after)
        )
        cand = img
        for b in (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.3):
            z = img + rng.uniform(-b, b, img.shape).astype(np.float32) if b else img
            cand = np.clip(np.clip(z, oracle.x0 - oracle.eps, oracle.x0 + oracle.eps), 0.0, 1.0)
            if not would_match(sim, oracle.clients[0], cand):
                break
        sim.add(oracle.clients[0], cand)
        return cand

    return transform


def would_match(sim: HistorySim, client: str, x: np.ndarray) -> bool:
    idx = sim.index[client]
    hits = [q for h in sim.fp(x[None])[0].tolist() for q in idx.get(h, ())]
    return bool(hits) and int(np.bincount(hits).max()) >= sim.t
