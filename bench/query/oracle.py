"""What bench/query/attacks.py's attackers see: a running ``lgm serve`` over HTTP, and nothing else.

``Server`` starts ``lgm serve`` on a loopback port (the defence's settings as ``LGM_*`` variables). ``API`` posts
images as ``/v1/predict`` JSON arrays; each simulated client is an address the bench forwards as the trusted
proxy (``X-Forwarded-For`` from 127.0.0.1, which uvicorn trusts by default), so one process plays many clients.
``Oracle`` is one attacked digit: it counts queries, notes the first success (misclassified, not flagged, within
the L-inf budget) and the first ``client_flagged`` answer, and turns answers into what an ART attack consumes.
``HistorySim`` replays the defence's rule on recorded fingerprints offline, to sweep its parameters and to play
the attacker that spreads its queries over several keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


class Budget(Exception):
    """The attacker's query budget is spent."""


class Server:
    def __init__(self, artifact: Path, port: int, env: dict[str, str], workers: int = 2) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cmd = [
            sys.executable,
            "-m",
            "service",
            "serve",
            str(artifact),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        cmd += ["--workers", str(workers), "--threads", "1", "--device", "cpu", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env})
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"lgm serve exited with code {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("lgm serve not ready within 180 s")

    def metrics(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=10).text

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


class API:
    """POST /v1/predict for one simulated client address."""

    def __init__(self, url: str, classes: list[str]) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)
        self.index = {c: i for i, c in enumerate(classes)}
        self.k = len(classes)

    def predict(self, x: np.ndarray, client: str) -> tuple[int, list[dict], bool]:
        """(N, 1, H, W) in [0, 1] -> (status, predictions, client_flagged)."""
        body = {"instances": [{"array": img.tolist()} for img in x.astype(np.float32)]}
        r = self.http.post(
            "/v1/predict", json=body, params={"top_k": self.k}, headers={"X-Forwarded-For": client}
        )
        if r.status_code != 200:
            return r.status_code, [], True
        j = r.json()
        return 200, j["predictions"], bool(j["client_flagged"])

    def probs(self, pred: dict) -> np.ndarray:
        p = np.zeros(self.k, dtype=np.float32)
        for t in pred["top_k"]:
            p[self.index[t["label"]]] = t["probability"] if t["probability"] is not None else 0.0
        if pred["top_k"][0]["probability"] is None:  # label only
            p[pred["class_index"]] = 1.0
        return p


class Oracle:
    """One attacked digit ``x0`` of class ``y``. ``clients``: the addresses it sends from, in turn (one unless it
    spreads its queries). ``mode``: what the attack gets back: ``probs``; ``probs+det`` (a flagged answer counts
    as the true class winning, and the abnormality score is added to the true class's score, so the attack seeks
    unflagged adversarials); ``label`` (the predicted class, the true one when flagged)."""

    def __init__(
        self,
        api: API,
        x0: np.ndarray,
        y: int,
        clients: list[str],
        budget: int,
        mode: str = "probs",
        eps: float = 0.3,
        transform=None,
        round_digits: int | None = None,
    ) -> None:
        self.api, self.x0, self.y, self.clients = api, x0, y, clients
        self.budget, self.mode, self.eps, self.transform = budget, mode, eps, transform
        self.round_digits = round_digits  # answers as query_reveal=rounded gives them (the same rounding)
        self.queries = 0
        self.requests = 0
        self.first_success: int | None = None
        self.first_flag: int | None = None
        self.first_refused: int | None = None
        self.sent: list[np.ndarray] = []  # every query as sent (for the offline replay)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.api.k), dtype=np.float32)
        for start in range(0, len(x), 64):
            chunk = x[start : start + 64]
            if self.transform is not None:
                chunk = np.stack([self.transform(img, self) for img in chunk])
            if self.queries + len(chunk) > self.budget:
                raise Budget
            client = self.clients[self.requests % len(self.clients)]
            self.requests += 1
            status, preds, flagged = self.api.predict(chunk, client)
            base = self.queries
            self.queries += len(chunk)
            self.sent.extend(chunk)
            if status != 200:
                self.first_refused = self.first_refused or base + 1
                out[start : start + len(chunk), self.y] = 1.0
                continue
            if flagged and self.first_flag is None:
                self.first_flag = base + 1
            for i, p in enumerate(preds):
                q = base + i + 1
                adv, pred = bool(p["is_adversarial"]), int(p["class_index"])
                close = float(np.abs(chunk[i] - self.x0).max()) <= self.eps + 1e-6
                if pred != self.y and not adv and close and self.first_success is None:
                    self.first_success = q
                probs = self.api.probs(p)
                abn = float(p["abnormality_score"] or 0.0)
                if self.round_digits is not None:
                    probs, abn = np.round(probs, self.round_digits), round(abn, self.round_digits)
                if self.mode == "probs":
                    out[start + i] = probs
                elif self.mode == "probs+det":
                    probs[self.y] += (1.0 if adv else 0.0) + 0.5 * abn
                    out[start + i] = probs
                else:
                    out[start + i, self.y if adv else pred] = 1.0
        return out


class HistorySim:
    """The defence's rule (service/stateful/store.py) replayed on recorded queries: an exact repeat is ignored;
    a query sharing >= ``match_hashes`` hashes with one earlier query of its client is a near-duplicate; the
    client is flagged at its ``flag_after``-th near-duplicate. Time and count bounds are not simulated (the
    bench's streams are shorter than both)."""

    def __init__(self, fingerprinter, match_hashes: int, flag_after: int) -> None:
        self.fp, self.t, self.m = fingerprinter, match_hashes, flag_after
        self.index: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.seen: dict[str, set[bytes]] = defaultdict(set)
        self.count: dict[str, int] = defaultdict(int)
        self.dups: dict[str, int] = defaultdict(int)

    def add(self, client: str, x: np.ndarray, hashes: np.ndarray | None = None) -> bool:
        """Record one query; True when its client is flagged (now or before)."""
        key = x.astype(np.float32).tobytes()
        if key in self.seen[client]:
            return self.dups[client] >= self.m
        self.seen[client].add(key)
        hashes = self.fp(x[None])[0] if hashes is None else hashes
        idx = self.index[client]
        hits = [q for h in hashes.tolist() for q in idx.get(h, ())]
        if hits and np.bincount(hits).max() >= self.t:
            self.dups[client] += 1
        n = self.count[client]
        for h in hashes.tolist():
            idx[h].append(n)
        self.count[client] = n + 1
        return self.dups[client] >= self.m
