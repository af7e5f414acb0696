"""Train several methods on real MNIST under one budget and evaluation; write a Markdown table.

    python scripts/compare_mnist.py --data-dir ../shared/data/mnist --out runs/mnist-baselines \
        --table docs/results/mnist-baselines.md standard pgd-at trades mart alp clp fgsm-rs trades+lp

Every run is `advrep train` with the quickstart recipe and the same overrides (printed in the
table), so each row can be reproduced on its own. Runs already finished are reused. With
``--trained DIR``, a row whose ``DIR/LABEL`` run already finished training is not trained again:
its best checkpoint is evaluated anew (``advrep eval``) with the ``--eval.*`` overrides of
``--set``, e.g. to add AutoAttack to runs that were trained without it. A row is a
method or a variant with its own overrides, ``"LABEL=METHOD --key=value ..."`` (one argument);
the read-outs in the runs' reports become tables below the accuracy table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

BUDGET = ["--config", "configs/quickstart-mnist.yaml", "--data.train_subset=20000", "--eval.n=1000",
          "--eval.attacks=[fgsm,pgd,cw]", "--eval.pgd_steps=20", "--eval.pgd_step_size=0.03",
          "--eval.cw_steps=30"]


def run_spec(spec: str) -> tuple[str, str, list[str]]:
    """``METHOD`` or ``"LABEL=METHOD --key=value ..."``: the row's label, method and own overrides."""
    head, *own = shlex.split(spec)
    label, _, method = head.rpartition("=")
    return label or method, method, own


def readout_cells(name: str, value: dict) -> dict[str, str]:
    """A read-out's result as table cells: its scalars (two decimals), and for ``hard_pairs``
    the three hardest (true→confused) pairs."""
    if name == "hard_pairs":
        return {"score": value["score"], "hardest pairs (true→confused: score)": ", ".join(
            f"{p['true']}→{p['confused']}: {p['score']:.2f}" for p in value["pairs"][:3])}
    if name == "adv_confusion":
        return {"accuracy under PGD": f"{100 * value['accuracy']:.1f}%"}
    cells = {}
    for key, v in value.items():
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            cells[key] = f"{v:.2f}" if isinstance(v, float) else str(v)
    return cells


def checks_cell(report: dict) -> str:
    checks = report.get("checks")
    if not checks:
        return "–"
    failed = [name for name, c in checks.items() if not c["passed"]]
    return f"{len(checks) - len(failed)}/{len(checks)} passed" + (f" (failed: {', '.join(failed)})" if failed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="METHOD", help='a method, or "LABEL=METHOD --key=value ..." '
                        "for a variant with its own overrides")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/mnist-compare")
    parser.add_argument("--table", required=True)
    parser.add_argument("--title", default="MNIST: every baseline under one budget")
    parser.add_argument("--set", action="append", default=[], metavar="--KEY=VALUE",
                        help="an extra override for every run (repeatable), e.g. --set=--model.head=prototype")
    parser.add_argument("--trained", metavar="DIR", help="evaluate the finished runs DIR/LABEL anew instead of "
                        "training them again (only the --eval.* overrides of --set apply)")
    parser.add_argument("--note", action="append", default=[], help="a paragraph to add below the tables")
    args = parser.parse_args()
    budget = BUDGET + args.set
    eval_budget = [o for o in budget if o.startswith("--eval.")]  # what an evaluation of a trained run takes
    rows = []
    for spec in args.runs:
        label, method, own = run_spec(spec)
        run = Path(args.out) / label
        trained = Path(args.trained) / label if args.trained else None
        if trained and (trained / "best.safetensors").is_file() and (trained / "report.json").is_file():
            cmd = ["advrep", "eval", str(trained), *eval_budget,
                   *(o for o in own if o.startswith("--eval.")), "--data-dir", args.data_dir, "--out", str(run),
                   "--quiet"]
        else:
            trained = run
            cmd = ["advrep", "train", *budget, f"--method={method}", *own, "--data-dir", args.data_dir, "--out",
                   str(run), "--quiet"]
        if not (run / "report.json").is_file():
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "advrep", *cmd[1:]], check=True)
            print(f"{label}: {time.time() - t0:.0f}s", flush=True)
        report = json.loads((run / "report.json").read_text())
        train_s = sum(json.loads(r)["train_time_s"] for r in (trained / "metrics.jsonl").read_text().splitlines())
        rows.append((label, own, report, train_s))
    aa = any("autoattack" in r["attacks"] for _, _, r, _ in rows)
    ra_soft = any("ra-soft" in r["attacks"] for _, _, r, _ in rows)
    ev = rows[0][2]["eval"]
    aa_note = (f" AutoAttack: version `{ev['aa_version']}`{' ' + str(ev['aa_attacks']) if ev.get('aa_attacks') else ''}"
               " on the same images." if aa else "")
    checks_note = (f" The gradient-masking checks (docs/evaluation.md) run on the first {ev['checks_n']} of them."
                   if ev.get("checks") else "")
    lines = [
        f"# {args.title}",
        "",
        f"Small CNN, real MNIST, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads), torch {torch.__version__}. Budget: the quickstart recipe (2 epochs, Adam 1e-3, batch 64, "
        "5-step PGD of 0.1 in training where the method attacks, eps ramped over the first half epoch) on the "
        "first 20,000 of the 59,000 training images left after the 1,000-image validation slice; the best "
        f"epoch by validation PGD accuracy is evaluated on the first {rows[0][2]['n']:,} test images, Linf eps 0.3: FGSM, "
        "PGD-20 (step 0.03, one uniform random start), CW∞-30 (margin loss, step 0.03)." + aa_note
        + " A sample counts as robust only if it is also correct clean (worst case: robust to every attack); "
        "95% Wilson intervals in brackets." + checks_note,
        "",
        "| run | clean | FGSM | PGD-20 | CW∞-30 |" + (" AutoAttack |" if aa else "")
        + (" PGD-20, RA soft selection |" if ra_soft else "") + " worst case | masking checks | train time |",
        "|---|---|---|---|---|" + ("---|" if aa else "") + ("---|" if ra_soft else "") + "---|---|---|",
    ]

    def cell(row):
        if row is None:
            return "–"
        lo, hi = row["ci95"]
        return f"{100 * row['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    for label, own, r, train_s in rows:
        a = r["attacks"]
        shown = [o for o in own if not o.startswith("--eval.readouts")]  # read-outs show in their own tables
        name = f"`{label}`" + (f" ({' '.join(shown)})" if shown else "")
        lines.append(f"| {name} | {cell(a['clean'])} | {cell(a.get('fgsm'))} | {cell(a.get('pgd'))} "
                     f"| {cell(a.get('cw'))} |" + (f" {cell(a.get('autoattack'))} |" if aa else "")
                     + (f" {cell(a.get('ra-soft'))} |" if ra_soft else "")
                     + f" {cell(a['worst_case'])} | {checks_cell(r)} | {train_s:.0f} s |")
    for name in dict.fromkeys(k for _, _, r, _ in rows for k in r.get("readouts", {})):
        have = [(label, readout_cells(name, r["readouts"][name])) for label, _, r, _ in rows
                if name in r.get("readouts", {})]
        keys = list(dict.fromkeys(k for _, cells in have for k in cells))
        lines += ["", f"Read-out `{name}` (on the evaluated test images; docs/methods.md and the method pages "
                  "say what each number is):", "", "| run | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        lines += [f"| `{label}` | " + " | ".join(cells.get(k, "–") for k in keys) + " |" for label, cells in have]
    for note in args.note:
        lines += ["", note]
    lines += ["", "Produced by:", "", "```bash",
              shlex.join(["python", "scripts/compare_mnist.py", "--data-dir", args.data_dir, "--out", args.out,
                          *(["--trained", args.trained] if args.trained else []),
                          "--table", args.table, "--title", args.title, *(f"--set={o}" for o in args.set),
                          *args.runs]), "```", "", "which runs, for each row:", "", "```bash",
              shlex.join(["advrep", "train", *budget, "--method=METHOD", "[OWN OVERRIDES]", "--data-dir",
                          args.data_dir, "--out", f"{args.out}/LABEL"]), "```", ""]
    if args.trained:
        lines[-1:-1] = ["or, for a row already trained in " + args.trained + ", evaluates that run anew:", "",
                        "```bash", shlex.join(["advrep", "eval", f"{args.trained}/LABEL", *eval_budget, "--data-dir",
                                               args.data_dir, "--out", f"{args.out}/LABEL"]), "```", ""]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
