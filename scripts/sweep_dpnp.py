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

``grid``: the points of ``GRID`` (or ``--points``) with two seeds each, every run trained on a
subset and then evaluated (PGD and AutoAttack's APGD-CE, or the attacks ``--aa`` names, on the
first test images, with the ``prototype_geometry`` read-out), so the score is AutoAttack's and
the geometry shows whether the prototype terms act (docs/results/adv-dpnp-grid.md,
docs/results/adv-dpnp-aa-sweep.md). Runs already finished are reused, so two processes with
different ``--points`` can share one ``--out`` and a last call with all of them writes the table.

    python scripts/sweep_dpnp.py grid --data-dir ../shared/data/mnist --out runs/dpnp/grid \
        --table docs/results/adv-dpnp-grid.md

``gradients``: at initialization, on one batch of real MNIST and its PGD examples, the norm of
each term's gradient with respect to the feature extractor and to the prototypes, next to the
clean CE's (docs/results/adv-dpnp-scaling.md).

    python scripts/sweep_dpnp.py gradients --data-dir ../shared/data/mnist --table docs/results/adv-dpnp-scaling.md
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


def train(budget_args: list, point: dict, seed: int, out: Path, args) -> None:
    """``advrep train`` of one point and seed into ``out`` (a subprocess), timed."""
    cmd = [*budget_args, *overrides(point), f"--seed={seed}", "--data-dir", args.data_dir, "--out", str(out), "--quiet"]
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "advrep", "train", *cmd], check=True)
    print(f"{tag(point, seed)}: {time.time() - t0:.0f}s", flush=True)


def run(point: dict, args, seed: int = 0) -> dict:
    """Train one point (or reuse its finished run) and return its best validation row."""
    out = Path(args.out) / tag(point, seed)
    metrics = out / "metrics.jsonl"
    rows = [json.loads(r) for r in metrics.read_text().splitlines()] if metrics.is_file() else []
    rows = [r for r in rows if r["epoch"] <= args.epochs]  # a longer run's first epochs are the same run
    if len(rows) < args.epochs:
        if out.exists():
            raise SystemExit(f"{out} holds an unfinished run; remove it or resume it with advrep train --resume")
        train(budget(args), point, seed, out, args)
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


# The grid's base point: the defaults before the AutoAttack sweep (which moved adv-dpnp's λ_pos to 1),
# kept so that the recorded runs' names and tables stay what they were. By default the grid varies
# λ_pos around the value whose pull is of the CE's order at the start (docs/adv-dpnp.md, "Scaling");
# --points gives other points.
BASE = {"alpha": 1.0, "lambda_pos": 0.1, "lambda_neg": 1.0, "lambda_cons": 6.0}
GRID = [{**BASE, "lambda_pos": v} for v in (0.1, 1.0, 3.0)]
GRID_SEEDS = (0, 1)
GEOMETRY = ("intra", "intra_rel", "intra_rel_adv", "min_angle_deg", "margin_rel", "margin_rel_adv")


def parse_point(text: str) -> dict:
    """``"lambda_pos=1,alpha=4"`` -> the base point with those values."""
    point = dict(BASE)
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in BASE:
            raise SystemExit(f"unknown factor '{key}' in --points (one of {', '.join(BASE)})")
        point[key] = float(value)
    return point


def grid_budget(args) -> list[str]:
    return ["--config", "configs/quickstart-mnist.yaml", "--method=adv-dpnp", f"--data.train_subset={args.subset}",
            f"--train.epochs={args.epochs}", "--data.val_size=0", f"--eval.n={args.n}",
            "--eval.attacks=[pgd,autoattack]", "--eval.aa_version=custom", f"--eval.aa_attacks=[{args.aa}]",
            "--eval.pgd_steps=20", "--eval.pgd_step_size=0.03", "--eval.checks=false", "--eval.corruptions=none",
            "--eval.readouts=[prototype_geometry]"]


def grid_run(point: dict, args, seed: int) -> dict:
    out = Path(args.out) / tag(point, seed)
    if not (out / "report.json").is_file():
        if out.exists():
            raise SystemExit(f"{out} holds an unfinished run; remove it")
        train(grid_budget(args), point, seed, out, args)
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    geometry = report["readouts"]["prototype_geometry"]
    return {**point, "seed": seed, "clean": report["clean_acc"], "pgd": report["attacks"]["pgd"]["acc"],
            "apgd": report["attacks"]["autoattack"]["acc"], **{k: geometry[k] for k in GEOMETRY},
            "train_s": sum(r["train_time_s"] for r in rows)}


def grid(args) -> int:
    points = [parse_point(t) for t in args.points] if args.points else GRID
    results = [grid_run(point, args, seed) for point in points for seed in GRID_SEEDS]
    aa = " + ".join(a.upper() for a in args.aa.split(","))
    lines = [
        f"# Adv-DPNP: the prototype terms' weights, {aa} as the score",
        "",
        f"Small CNN, real MNIST, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Each run: the quickstart recipe (Adam 1e-3, batch 64, "
        f"5-step PGD of 0.1 at eps 0.3, eps ramped over the first half epoch), {args.epochs} epochs on the first "
        f"{args.subset:,} training images, no validation slice (the last epoch is evaluated), then the first {args.n} "
        f"test images at Linf 0.3: PGD-20 (step 0.03) and AutoAttack's {aa} (pyautoattack, custom version with "
        f"{args.aa} only), a sample counting only if also correct clean; the `prototype_geometry` read-out on the same "
        "images (`intra`: mean distance to the own prototype; `_rel`: over the mean distance between prototypes; "
        "`margin_rel`: (rival − own)/(rival + own) distance, in [−1, 1]). The score reads test images, so the "
        "selection is not independent of them: read the figures as a comparison at one budget, not as test accuracies.",
        "",
        f"| α | λ_pos | λ_neg | λ_cons | seed | clean | PGD-20 | {aa} | intra | intra_rel | intra_rel (adv) | min angle | margin_rel | margin_rel (adv) | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['alpha']:g} | {r['lambda_pos']:g} | {r['lambda_neg']:g} | {r['lambda_cons']:g} | {r['seed']} | "
                     f"{100 * r['clean']:.1f}% | {100 * r['pgd']:.1f}% | {100 * r['apgd']:.1f}% | {r['intra']:.2f} | "
                     f"{r['intra_rel']:.2f} | {r['intra_rel_adv']:.2f} | {r['min_angle_deg']:.1f}° | "
                     f"{r['margin_rel']:.3f} | {r['margin_rel_adv']:.3f} | {r['train_s']:.0f} s |")
    lines += ["", "Mean over the seeds:", "", f"| α | λ_pos | λ_neg | λ_cons | clean | {aa} | intra_rel | margin_rel |",
              "|---|---|---|---|---|---|---|---|"]
    for point in points:
        rs = [r for r in results if all(r[k] == v for k, v in point.items())]
        lines.append(f"| {point['alpha']:g} | {point['lambda_pos']:g} | {point['lambda_neg']:g} | {point['lambda_cons']:g} | "
                     f"{100 * statistics.mean(r['clean'] for r in rs):.1f}% | "
                     f"{100 * statistics.mean(r['apgd'] for r in rs):.1f}% | "
                     f"{statistics.mean(r['intra_rel'] for r in rs):.2f} | {statistics.mean(r['margin_rel'] for r in rs):.3f} |")
    lines += ["", "Produced by:", "", "```bash",
              shlex.join(["python", "scripts/sweep_dpnp.py", "grid", "--data-dir", args.data_dir, "--out", args.out,
                          "--table", args.table, "--subset", str(args.subset), "--epochs", str(args.epochs), "--n",
                          str(args.n), "--aa", args.aa, *(["--points", *args.points] if args.points else [])]),
              "```", ""]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def gradients(args) -> int:
    import numpy as np

    from advrep import methods, models
    from advrep.methods import adv_dpnp as dpnp
    from advrep.methods.base import Passes, ce, kl_batchmean
    from advrep.tensors import fp32
    from advrep.threat import Threat

    data = np.load(Path(args.data_dir) / "train.npz")
    x = torch.tensor(data["x"][:args.batch]).float().div(255).unsqueeze(1)
    y = torch.tensor(data["y"][:args.batch]).long()
    lines = ["# Adv-DPNP: each term's gradient against the CE's at the start", "",
             f"Small CNN with the prototype head at initialization (seed 0), the first {args.batch} real MNIST "
             "training images and their PGD examples (5 steps of 0.1 at eps 0.3 on the prototype CE, uniform start), "
             f"CPU, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. Each term unweighted; `trunk`: the norm of "
             "its gradient with respect to every parameter but the prototypes, over the clean CE's; `prototypes`: the "
             "same for the prototype parameters. `d` = 200.", "",
             "| α | ‖h‖ | ‖h − c_y‖ | prototype spacing | term | value | trunk / CE | prototypes / CE |",
             "|---|---|---|---|---|---|---|---|"]
    for alpha in args.alphas:
        torch.manual_seed(0)
        model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28, head="prototype", alpha=alpha)
        method = methods.create("adv-dpnp")
        model.eval()
        x_adv = method.perturb(model, x, y, Threat(eps=0.3, step_size=0.1, steps=5))
        model.train()
        torch.manual_seed(1)
        p = Passes(model, x, x_adv, y)
        h, c, h_adv = fp32(p.features), fp32(dpnp.class_vectors(model.head)), fp32(p.features_adv)
        logits_adv = dpnp.detached_head(model.head, p.features_adv)
        terms = {"CE": ce(p.logits, y), "CE'": ce(logits_adv, y), "L_pos": dpnp.positive(h, c, y),
                 "L_pos'": dpnp.positive(h_adv, c.detach(), y), "L_neg": dpnp.negative(h, c, y, "sample"),
                 "L_cons": kl_batchmean(dpnp.detached_head(model.head, p.features), logits_adv)}
        trunk = [q for name, q in model.named_parameters() if name != "classifier.fc3.weight"]
        norms = {}
        for name, term in terms.items():
            grads = torch.autograd.grad(term, [*trunk, model.head.weight], retain_graph=True, allow_unused=True)
            norms[name] = (sum(g.pow(2).sum() for g in grads[:-1] if g is not None).sqrt().item(),
                           0.0 if grads[-1] is None else grads[-1].norm().item())
        spacing = torch.cdist(c, c).sum().item() / (len(c) * (len(c) - 1))
        for name, term in terms.items():
            lines.append(f"| {alpha:g} | {h.norm(dim=1).mean():.2f} | {(h - c[y]).norm(dim=1).mean():.2f} | {spacing:.2f} | "
                         f"{name} | {term.item():.4f} | {norms[name][0] / norms['CE'][0]:.2f} | "
                         f"{norms[name][1] / norms['CE'][1]:.2f} |")
    lines += ["", "Produced by:", "", "```bash", shlex.join(["python", "scripts/sweep_dpnp.py", "gradients", "--data-dir",
                                                          args.data_dir, "--table", args.table]), "```", ""]
    Path(args.table).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    def training(name, help, fn, out, subset, subset_help, epochs):
        q = sub.add_parser(name, help=help)
        q.add_argument("--data-dir", required=True)
        q.add_argument("--out", default=out)
        q.add_argument("--table", required=True)
        q.add_argument("--subset", type=int, default=subset, help=subset_help)
        q.add_argument("--epochs", type=int, default=epochs)
        q.set_defaults(fn=fn)
        return q

    training("sweep", "settle the defaults on MNIST", sweep, "runs/dpnp/sweep", 10000,
             "training images (after the validation slice)", 1)
    g = training("grid", "points scored by AutoAttack (APGD-CE by default), with the geometry", grid, "runs/dpnp/grid",
                 2000, "training images", 2)
    g.add_argument("--n", type=int, default=200, help="test images evaluated")
    g.add_argument("--aa", default="apgd-ce", help="AutoAttack's attacks, comma-separated (apgd-ce,apgd-t)")
    g.add_argument("--points", nargs="+", help='points as "lambda_pos=1,alpha=4" (the rest: the base point α 1, λ_pos 0.1, λ_neg 1, λ_cons 6); '
                   "default: λ_pos 0.1, 1, 3")
    r = sub.add_parser("gradients", help="each term's gradient norm against the CE's at the start")
    r.add_argument("--data-dir", required=True)
    r.add_argument("--table", required=True)
    r.add_argument("--batch", type=int, default=128)
    r.add_argument("--alphas", type=float, nargs="+", default=[1.0, 4.0])
    r.set_defaults(fn=gradients)
    args = parser.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    raise SystemExit(main())
