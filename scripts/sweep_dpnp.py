"""Adv-DPNP's MNIST sweep: the small recorded sweep that settles α, λ_pos, λ_neg and λ_cons.

``sweep``: one factor at a time around the start values; a value is kept only if it beats the
start's mean over three seeds by more than twice their standard deviation, and the kept values
are then run together (three seeds) and adopted if their mean beats the start's. Every run is
`advrep train` with the quickstart recipe on a training subset, without the test evaluation (the
selection never looks at the test set): a run's score is the PGD accuracy on the 1,000-image
validation slice at its best epoch. Runs already finished are reused.

The comparison with pgd-at and trades (robustness and the ``prototype_geometry`` read-out of each)
is made by `scripts/compare_mnist.py` (docs/results/adv-dpnp-mnist.md).

    python scripts/sweep_dpnp.py sweep --data-dir ../shared/data/mnist --out runs/dpnp/sweep \
        --table docs/results/adv-dpnp-sweep.md
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BUDGET = ["--config", "configs/quickstart-mnist.yaml", "--method=adv-dpnp", "--eval.after_train=false"]
START = {"alpha": 4.0, "lambda_pos": 0.1, "lambda_neg": 1.0, "lambda_cons": 6.0}
VALUES = {"alpha": [1.0, 2.0, 8.0], "lambda_pos": [0.0, 0.5], "lambda_neg": [0.0, 3.0], "lambda_cons": [0.0, 2.0, 12.0]}
SEEDS = (0, 1, 2)  # of the start point and of the combined changes: the noise a change must beat
SYMBOL = {"alpha": "α", "lambda_pos": "λ_pos", "lambda_neg": "λ_neg", "lambda_cons": "λ_cons"}


def budget(args) -> list[str]:
    return [*BUDGET, f"--data.train_subset={args.subset}", f"--train.epochs={args.epochs}"]


def overrides(point: dict) -> list[str]:
    return [f"--model.head_args={{alpha: {point['alpha']}}}",
            *(f"--method.{k}={v}" for k, v in point.items() if k != "alpha")]


def tag(point: dict, seed: int = 0) -> str:
    return "_".join(f"{k.replace('lambda_', 'l')}{v:g}" for k, v in point.items()) + (f"_seed{seed}" if seed else "")


def run(point: dict, args, seed: int = 0) -> dict:
    """Train one point (or reuse its finished run) and return its best validation row."""
    out = Path(args.out) / tag(point, seed)
    metrics = out / "metrics.jsonl"
    rows = [json.loads(r) for r in metrics.read_text().splitlines()] if metrics.is_file() else []
    rows = [r for r in rows if r["epoch"] <= args.epochs]  # a longer run's first epochs are the same run
    if len(rows) < args.epochs:
        if out.exists():
            raise SystemExit(f"{out} holds an unfinished run; remove it or resume it with advrep train --resume")
        cmd = [*budget(args), *overrides(point), f"--seed={seed}", "--data-dir", args.data_dir, "--out", str(out),
               "--quiet"]
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "advrep", "train", *cmd], check=True)
        print(f"{tag(point, seed)}: {time.time() - t0:.0f}s", flush=True)
        rows = [json.loads(r) for r in metrics.read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_robust"])
    return {**point, "seed": seed, "val_clean": best["val_clean"], "val_robust": best["val_robust"],
            "epoch": best["epoch"], "train_s": sum(r["train_time_s"] for r in rows)}


def mean_robust(rows: list[dict]) -> float:
    return statistics.mean(r["val_robust"] for r in rows)


def sweep(args) -> int:
    start = [run(START, args, seed) for seed in SEEDS]
    base, noise = mean_robust(start), statistics.stdev(r["val_robust"] for r in start)
    results, chosen = list(start), dict(START)
    for key, values in VALUES.items():
        tried = [run({**START, key: v}, args) for v in values]
        results += tried
        best = max(tried, key=lambda r: r["val_robust"])
        if best["val_robust"] > base + 2 * noise:  # a change must beat the start by more than its seed noise
            chosen[key] = best[key]
    final, combo = dict(START), []
    if chosen != START:
        combo = [run(chosen, args, seed) for seed in SEEDS]
        results += combo
        if mean_robust(combo) > base:
            final = chosen
    lines = [
        "# Adv-DPNP: the MNIST sweep of α, λ_pos, λ_neg, λ_cons",
        "",
        f"Small CNN, real MNIST, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}. Each run: the quickstart recipe (Adam 1e-3, batch 64, 5-step PGD of 0.1 at eps "
        f"0.3, eps ramped over the first half epoch), {args.epochs} epoch(s) on the first {args.subset:,} training "
        "images left after the 1,000-image validation slice; score = PGD-10 accuracy (eps 0.3, step 0.1, counted "
        "only if also correct clean) on that validation slice at the run's best epoch. The test set is never used.",
        "",
        f"Rule: the start values run with seeds {', '.join(map(str, SEEDS))}; each factor is then varied alone (seed "
        "0), and a value replaces the start value only if its score beats the start's mean by more than twice the "
        "start's seed-to-seed standard deviation. The changes that pass run together with the same seeds and are "
        "adopted if their mean beats the start's.",
        "",
        "| α | λ_pos | λ_neg | λ_cons | seed | val clean | val robust | train time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['alpha']:g} | {r['lambda_pos']:g} | {r['lambda_neg']:g} | {r['lambda_cons']:g} | {r['seed']} | "
                     f"{100 * r['val_clean']:.1f}% | {100 * r['val_robust']:.1f}% | {r['train_s']:.0f} s |")
    lines += ["", f"Start: mean {100 * base:.1f}%, seed standard deviation {100 * noise:.1f} points, so a change needs "
                  f"more than {100 * (base + 2 * noise):.1f}%."]
    if combo:
        lines += ["", "Passed: " + ", ".join(f"{SYMBOL[k]} = {chosen[k]:g}" for k in START if chosen[k] != START[k])
                  + f"; together: mean {100 * mean_robust(combo):.1f}%."]
    lines += ["", "Selected: " + ", ".join(f"{SYMBOL[k]} = {final[k]:g}" for k in START), "", "Produced by:", "",
              "```bash", shlex.join(["python", "scripts/sweep_dpnp.py", "sweep", "--data-dir", args.data_dir, "--out",
                                     args.out, "--table", args.table, "--subset", str(args.subset), "--epochs",
                                     str(args.epochs)]),
              "```", "", "which runs, for each point and seed:", "", "```bash",
              shlex.join(["advrep", "train", *budget(args), *overrides(START), "--seed=0", "--data-dir", args.data_dir,
                          "--out", f"{args.out}/{tag(START)}"]), "```", ""]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep", help="settle the defaults on MNIST")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", default="runs/dpnp/sweep")
    p.add_argument("--table", required=True)
    p.add_argument("--subset", type=int, default=10000, help="training images (after the validation slice)")
    p.add_argument("--epochs", type=int, default=1)
    p.set_defaults(fn=sweep)
    args = parser.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
