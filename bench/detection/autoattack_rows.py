"""The published rows that ``bench/detection/autoattack.py`` sets beside its own, per dataset, and its tables.

- MNIST at L-inf 0.3: Croce & Hein 2020 (Table 2) and the RobustBench MNIST leaderboard;
- CIFAR-10 at L-inf 8/255: RobustBench's leaderboard rows trained without extra data
  (``model_info/cifar10/Linf/*.json``), each with its architecture and parameter count beside ours;
- any other dataset, or another budget: no published rows, ours alone.

CIFAR-10 is the ``cifar10`` loader's dataset or an image folder that holds it (the card's class names are
CIFAR-10's ten, in their order, and the network reads 3x32x32). What the tables print comes from a report.json
alone (``format_report``, ``target_row``), so docs/mnist-benchmark.md renders its record with the same
functions.

    out = json.loads(Path("reports/autoattack/report.json").read_text())
    print(format_report(out))
"""

from __future__ import annotations

from pathlib import Path

from detector.harness.metrics import wilson as harness_wilson

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Clean and AutoAttack accuracy (%) on the 10,000 test images. MNIST: Croce & Hein 2020 (Table 2) and the
# RobustBench MNIST L-inf 0.3 leaderboard. CIFAR-10: RobustBench's model_info entries (Wong2020Fast,
# Engstrom2019Robustness, Rice2020Overfitting; no extra data). Those entries name the architecture, not its
# size: we counted the parameters of the networks RobustBench's model zoo builds for them (PreActResNet-18,
# ResNet-50 with bottleneck blocks and the CIFAR 3x3 stem, WideResNet-34-20; weights and biases, BatchNorm's
# included, not its running statistics); WideResNet-34-10 counted the same way gives the usual 46.16M.
PUBLISHED = {
    "mnist": {
        "eps": 0.3,
        "source": None,  # stated in docs/mnist-benchmark.md, whose table predates this field
        "target": 0.93,  # the project's: above TRADES' published 92.81%
        "target_note": "above TRADES' 92.81%",
        "rows": [
            {"model": "Madry et al. 2018 (PGD adversarial training)", "clean": 98.53, "autoattack": 88.50},
            {"model": "Zhang et al. 2019 (TRADES)", "clean": 99.48, "autoattack": 92.81},
            {"model": "Gowal et al. 2020 (uncovering the limits)", "clean": 99.26, "autoattack": 96.34},
        ],
    },
    "cifar10": {
        "eps": 8 / 255,
        "source": "RobustBench's CIFAR-10 L-inf 8/255 leaderboard, models trained without extra data",
        # the project's, set for an adversarially trained CIFAR-10 model whose network is far smaller than these
        # rows' (a network without adversarial training misses it, as it misses detector_suite's CIFAR targets)
        "target": 0.40,
        "target_note": "set for an adversarially trained CIFAR-10 model",
        "rows": [
            {
                "model": "Wong et al. 2020 (fast is better than free)",
                "architecture": "PreAct ResNet-18",
                "params": 11_171_146,
                "clean": 83.34,
                "autoattack": 43.21,
                "n": 10000,
            },
            {
                "model": "Engstrom et al. 2019 (robustness library)",
                "architecture": "ResNet-50",
                "params": 23_520_842,
                "clean": 87.03,
                "autoattack": 49.25,
                "n": 10000,
            },
            {
                "model": "Rice et al. 2020 (overfitting in adversarially robust deep learning)",
                "architecture": "WideResNet-34-20",
                "params": 184_531_674,
                "clean": 85.34,
                "autoattack": 53.42,
                "n": 10000,
            },
        ],
    },
}


def literature(card: dict, input_shape: list[int] | None = None) -> str | None:
    """Which published rows fit the dataset of an artifact's card (model.json's ``dataset``): "mnist",
    "cifar10" or None. ``input_shape``: the network's (C, H, W), when known."""
    name = card.get("name")
    if name == "mnist":
        return "mnist"
    cifar_folder = name == "folder" and card.get("class_names") == CIFAR10_CLASSES
    if (name == "cifar10" or cifar_folder) and list(input_shape or (3, 32, 32)) == [3, 32, 32]:
        return "cifar10"
    return None


def title(card: dict, input_shape: list[int] | None = None) -> str:
    """How tables name the test split: MNIST's official test set, CIFAR-10's test split, or by the card."""
    key = literature(card, input_shape)
    if key == "mnist":
        return "MNIST official test set"
    return f"{'CIFAR-10' if key == 'cifar10' else card['name']} test split"


def default_out(card: dict, input_shape: list[int] | None = None) -> Path:
    """``reports/autoattack`` for MNIST (its record, docs/results/data/autoattack.json, is collected from
    there), ``reports/autoattack_cifar10`` for CIFAR-10, ``reports/autoattack_NAME`` for the rest."""
    key = literature(card, input_shape)
    return Path("reports") / ("autoattack" if key == "mnist" else f"autoattack_{key or card['name']}")


def items(card: dict) -> str:
    """What the tables call the test inputs: digits when the card's classes are 0-9, images otherwise."""
    return "digits" if card.get("class_names") == [str(i) for i in range(10)] else "images"


def published(key: str | None, eps: float) -> dict:
    """The row set of ``PUBLISHED`` for that dataset at that budget; no rows where none was published."""
    rows = PUBLISHED.get(key or "")
    if rows is None or abs(rows["eps"] - eps) > 1e-4:  # 8/255 written 0.03137 is still 8/255
        # the targets were set at the rows' budget: none at another
        return {"eps": eps, "source": None, "target": None, "target_note": "", "rows": []}
    return rows


def architecture(arch: dict) -> str:
    """Our network as the tables name it, from model.json's ``arch``: e.g. ``resnet-20, lgm head``."""
    depth = (arch.get("backbone_args") or {}).get("depth")
    return f"{arch.get('backbone', '?')}{f'-{depth}' if depth else ''}, {arch.get('head', '?')} head"


def size(params: int) -> str:
    """A parameter count as the tables print it: 184.5M, 0.27M, 8.4k."""
    if params >= 10**7:
        return f"{params / 1e6:.1f}M"
    return f"{params / 1e6:.2f}M" if params >= 10**5 else f"{params / 1e3:.1f}k"


def eps_text(eps: float) -> str:
    """0.3 stays 0.3; a whole number of 1/255 steps with a long decimal reads k/255 (8/255)."""
    s, k = f"{eps:g}", eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and len(s) > 5 else s


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of k / n (detector/harness/metrics.py; (0, 1) when n is 0)."""
    return tuple(harness_wilson(k, n) or (0.0, 1.0))  # type: ignore[return-value]


def pct(k: int, n: int) -> str:
    """k / n as a percentage with its 95% Wilson interval, as every table of these benchmarks shows it."""
    lo, hi = wilson(k, n)
    return f"{100 * k / max(n, 1):.2f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _rows(out: dict) -> list[str]:
    """The comparison table: ours, then the published rows; with an architecture (parameters) column when
    every row can fill it (CIFAR-10's rows and ours; MNIST's predate it, so its table stays as it was)."""
    n, mine = out["n"], f"this project: {out['artifact']}"
    pub = out["published"]
    ours = f"{pct(out['n_clean'], n)} | {pct(out['n_robust'], n)} | {n}"
    if "params" not in out or not all("params" in p for p in pub):
        return [
            "| model | clean accuracy | AutoAttack robust accuracy | inputs |",
            "|---|---|---|---|",
            f"| {mine} | {ours} |",
            *(
                f"| {p['model']}, published | {p['clean']:.2f}% | {p['autoattack']:.2f}% | "
                f"{p.get('n', 10000):,} |"
                for p in pub
            ),
        ]
    return [
        "| model | architecture (parameters) | clean accuracy | AutoAttack robust accuracy | inputs |",
        "|---|---|---|---|---|",
        f"| {mine} | {out['architecture']} ({size(out['params'])}) | {ours} |",
        *(
            f"| {p['model']}, published | {p['architecture']} ({size(p['params'])}) | {p['clean']:.2f}% | "
            f"{p['autoattack']:.2f}% | {p.get('n', 10000):,} |"
            for p in pub
        ),
    ]


def format_report(out: dict) -> str:
    """The benchmark's tables, from its report.json alone: what it prints and what docs/mnist-benchmark.md
    shows are this one function."""
    n, n_clean, n_rob = out["n"], out["n_clean"], out["n_robust"]
    sample = f"the first {n}" if out["first_n_contiguous"] else f"{n} of the first {out['n_asked']}"
    lo, hi = out["robust_interval"]
    steps, queries = out.get("steps", 100), out.get("queries", 5000)
    version = (
        "standard: APGD-CE, APGD-T, FAB-T, Square 5,000 queries; torchattacks 3.5.1's attacks with the "
        "authors' settings"
    )
    if (steps, queries) != (100, 5000):
        version = (
            f"NOT standard: APGD-CE, APGD-T, FAB-T at {steps} iterations, Square {queries:,} queries; "
            "torchattacks 3.5.1's attacks, the authors' other settings"
        )
    target = out["target_robust_accuracy"]
    lines = [
        f"AutoAttack ({version}), L-{out['norm'][1:]} {eps_text(out['eps'])}, {out['split']}: {n} "
        f"{out.get('items', 'digits')} ({sample} of {out['order'].replace('numpy.random.', 'numpy ')}), "
        f"model {out['artifact']}, CPU, {out['wall_seconds']:.0f} s",
        "",
        *_rows(out),
        *([f"\nPublished rows: {out['published_source']}."] if out.get("published_source") else []),
        "",
        "Robust accuracy after each attack of the ensemble (cumulative, same inputs):",
        "",
        "| after | robust | attack s |",
        "|---|---|---|",
        f"| clean | {pct(n_clean, n)} | |",
        *(f"| {a} | {pct(k, n)} | {out['attack_seconds'][a]:.0f} |" for a, k in out["robust_after"].items()),
        "",
        f"Brackets: 95% Wilson intervals over the {n} inputs."
        + (
            f" Target robust accuracy >= {100 * target:.0f}%: {out['target']} ({100 * n_rob / n:.2f}%, "
            f"interval [{100 * lo:.1f}, {100 * hi:.1f}])."
            if target is not None
            else ""
        ),
    ]
    return "\n".join(lines)


TARGET_HEADER = "| target | figure | verdict |\n|---|---|---|\n"


def target_row(out: dict) -> str:
    """The AutoAttack row of docs/mnist-benchmark.md's targets table."""
    figure = f"{pct(out['n_robust'], out['n'])}, {'first ' if out['first_n_contiguous'] else ''}{out['n']}"
    figure += f" {out.get('items', 'digits')}"
    if out["target_robust_accuracy"] is None:
        return TARGET_HEADER + f"| AutoAttack robust accuracy (no target for this dataset) | {figure} | - |"
    lo, hi = out["robust_interval"]
    t = 100 * out["target_robust_accuracy"]
    verdict = {
        "met": "met",
        "missed": "missed",
    }.get(out["target"], f"not decided: the interval straddles {t:.0f}%")
    # records written before the report carried its note are MNIST's
    note = out.get("target_note", PUBLISHED["mnist"]["target_note"])
    row = f"| AutoAttack robust accuracy >= {t:.0f}%{f' ({note})' if note else ''} | {figure} | {verdict} |"
    return TARGET_HEADER + row
