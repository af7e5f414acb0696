"""The table of docs/results/cifar10-resnet18.md from the rows cifar10_rows.sh wrote.

    python scripts/gpu-check/cifar10_table.py ROWS_DIR [ROWS_DIR ...] > table.md

Each ``ROWS_DIR/LABEL/`` holds a row's ``report.json`` (the evaluation), ``metrics.jsonl`` (the
training) and ``row.json`` (exit status, wall times, the two commands). Rows keep the order of
cifar10_rows.sh's default list; a row that did not finish is listed with its exit status. Below the
table: the device, torch version and advrep commit of each report.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from advrep.compare import MISSING, checks_cell, markdown_table  # noqa: E402

ORDER = ["pgd-at", "trades", "standard", "adv-dpnp", "trades+adr", "spat", "trades+anc-ra", "mart", "aalp",
         "pgd-at+adr", "alp", "fgsm-rs"]
COLUMNS = [("pgd", "PGD-20"), ("cw", "CW∞-30"), ("autoattack", "AutoAttack"), ("ra-soft", "ra-soft"),
           ("worst_case", "worst case")]


def cell(row: dict | None) -> str:
    if not row:
        return MISSING
    lo, hi = row["ci95"]
    return f"{100 * row['acc']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def rows_of(dirs: list[Path]) -> dict[str, Path]:
    found = {d.name: d for root in dirs for d in sorted(Path(root).iterdir()) if (d / "row.json").is_file()}
    return dict(sorted(found.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    table, unfinished, machines, sizes = [], [], {}, set()
    for label, d in rows_of([Path(a) for a in argv]).items():
        row = json.loads((d / "row.json").read_text())
        if row["rc"] != 0 or not (d / "report.json").is_file():
            unfinished.append(f"- `{label}`: exit status {row['rc']} after {row['train_wall_s']} s of training "
                              f"and {row['eval_wall_s']} s of evaluation")
            continue
        report = json.loads((d / "report.json").read_text())
        attacks, sizes = report["attacks"], sizes | {report["n"]}
        table.append({"row": f"`{label}`", "clean": cell(attacks["clean"]),
                      **{title: cell(attacks.get(key)) for key, title in COLUMNS},
                      "masking checks": checks_cell(report),
                      "wall time (train + eval)": f"{row['train_wall_s']} + {row['eval_wall_s']} s"})
        key = (report.get("device", "?"), report.get("torch_version", "?"), (report.get("git_commit") or "?")[:7])
        machines.setdefault(key, []).append(label)
    out = []
    if table:
        out += [f"Accuracies in % on the first {', '.join(map(str, sorted(sizes)))} CIFAR-10 test images, Linf eps 8/255, "
                "95% Wilson intervals; robust only if also correct clean; worst case: robust to every attack.", ""]
        out += markdown_table(table)
        out += ["", *(f"- {', '.join(labels)}: {dev}, torch {tv}, advrep {commit}"
                      for (dev, tv, commit), labels in machines.items())]
    if unfinished:
        out += ["", "Not finished:", *unfinished]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
