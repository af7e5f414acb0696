"""Train several methods on real MNIST under one budget and evaluation; write a Markdown table.

    python scripts/compare_mnist.py --data-dir ../shared/data/mnist --out runs/mnist-baselines \
        --table docs/results/mnist-baselines.md standard pgd-at trades mart alp clp fgsm-rs trades+lp

Every run is `advrep train` with the quickstart recipe and the same overrides (printed in the
table), so each row can be reproduced on its own. Runs already finished are reused.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default="runs/mnist-compare")
    parser.add_argument("--table", required=True)
    parser.add_argument("--title", default="MNIST: every baseline under one budget")
    parser.add_argument("--set", action="append", default=[], metavar="--KEY=VALUE",
                        help="an extra override for every run (repeatable), e.g. --set=--model.head=prototype")
    args = parser.parse_args()
    budget = BUDGET + args.set
    rows = []
    for method in args.methods:
        run = Path(args.out) / method
        cmd = ["advrep", "train", *budget, f"--method={method}", "--data-dir", args.data_dir, "--out", str(run),
               "--quiet"]
        if not (run / "report.json").is_file():
            t0 = time.time()
            subprocess.run([sys.executable, "-m", "advrep", *cmd[1:]], check=True)
            print(f"{method}: {time.time() - t0:.0f}s", flush=True)
        report = json.loads((run / "report.json").read_text())
        train_s = sum(json.loads(r)["train_time_s"] for r in (run / "metrics.jsonl").read_text().splitlines())
        rows.append((method, report, train_s))
    lines = [
        f"# {args.title}",
        "",
        f"Small CNN, real MNIST, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads), torch {torch.__version__}. Budget: the quickstart recipe (2 epochs, Adam 1e-3, batch 64, "
        "5-step PGD of 0.1 in training where the method attacks, eps ramped over the first half epoch) on the "
        "first 20,000 of the 59,000 training images left after the 1,000-image validation slice; the best "
        "epoch by validation PGD accuracy is evaluated on the first 1,000 test images, Linf eps 0.3: FGSM, "
        "PGD-20 (step 0.03, one uniform random start), CW∞-30 (margin loss, step 0.03). A sample counts as "
        "robust only if it is also correct clean; 95% Wilson intervals in brackets.",
        "",
        "| method | clean | FGSM | PGD-20 | CW∞-30 | worst case | train time |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(row):
        lo, hi = row["ci95"]
        return f"{100 * row['acc']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"

    for method, r, train_s in rows:
        a = r["attacks"]
        lines.append(f"| `{method}` | {cell(a['clean'])} | {cell(a['fgsm'])} | {cell(a['pgd'])} | {cell(a['cw'])} "
                     f"| {cell(a['worst_case'])} | {train_s:.0f} s |")
    lines += ["", "Produced by:", "", "```bash",
              shlex.join(["python", "scripts/compare_mnist.py", "--data-dir", args.data_dir, "--out", args.out,
                          "--table", args.table, "--title", args.title, *(f"--set={o}" for o in args.set),
                          *args.methods]), "```", "", "which runs, for each method:", "", "```bash",
              shlex.join(["advrep", "train", *budget, "--method=METHOD", "--data-dir", args.data_dir, "--out",
                          f"{args.out}/METHOD"]), "```", ""]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
