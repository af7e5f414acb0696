"""The tables of docs/results/ema-awp-mnist.md, from per-run records kept in the repository.

    python scripts/ema_awp_table.py collect RUNS docs/results/ema-awp-mnist   # after runs finish
    python scripts/ema_awp_table.py table docs/results/ema-awp-mnist > table.md

``collect`` reads ``RUNS/sSEED/VARIANT`` (VARIANT in pgd-at, pgd-at+awp, trades, trades+awp; a
training run with its ``metrics.jsonl``) and its two evaluations ``RUNS/sSEED/VARIANT/eval-raw``
and ``eval-ema`` (``advrep eval`` with PGD and AutoAttack on the same images, the commands in that
page), and writes one small record per finished run, ``sSEED-VARIANT.json``: the metrics rows,
both reports' accuracies, per-image masks and commit, and the machine it ran on (read here, so
collect on the machine that ran them). The checkpoints are not kept: the records are what the tables need,
and they let the table be completed over several sessions, each adding whole runs.

``table`` writes four Markdown tables over the records present: every weight set with 95% Wilson
intervals, EMA − raw and AWP − no AWP on the same images (exact McNemar p, the test ``advrep
compare`` runs; an AWP pair only where both runs exist), and the seed means where both seeds
exist; runs not yet recorded are listed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from advrep.compare import markdown_table  # noqa: E402
from advrep.masks import decode_mask  # noqa: E402
from advrep.runs import read_metrics  # noqa: E402
from advrep.stats import mcnemar_exact, wilson_interval  # noqa: E402

VARIANTS = {"pgd-at": ("pgd-at", 0), "pgd-at+awp": ("pgd-at", 0.01), "trades": ("trades", 0),
            "trades+awp": ("trades", 0.005)}
COLUMNS = [("clean", "clean"), ("pgd", "PGD-20"), ("autoattack", "APGD-CE + APGD-T"), ("worst_case", "worst case")]
SEEDS = (0, 1)


def machine() -> dict:
    import torch

    from advrep.factory import native_bf16

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    return {"cpu": cpu, "native_bf16": native_bf16(torch.device("cpu")), "torch": torch.__version__}


def collect(runs: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    here, written = machine(), 0
    for seed in SEEDS:
        for variant in VARIANTS:
            run = runs / f"s{seed}" / variant
            reports = {w: run / f"eval-{w}" / "report.json" for w in ("raw", "ema")}
            if not all(p.is_file() for p in reports.values()):
                continue
            rows = read_metrics(run / "metrics.jsonl")
            evals = {}
            for w, path in reports.items():
                r = json.loads(path.read_text())
                evals[w] = {"n": r["n"], "eps": r["eps"], "attacks": {k: v["acc"] for k, v in r["attacks"].items()},
                            "masks": r["masks"], "time_s": r["time_s"], "torch_version": r["torch_version"],
                            "weights": r["weights"], "checkpoint": Path(r["checkpoint"]).name,
                            "git_commit": r["git_commit"], "autoattack": r.get("autoattack")}
            record = {"seed": seed, "variant": variant, "method": VARIANTS[variant][0],
                      "awp_gamma": VARIANTS[variant][1], "metrics": rows, "evals": evals, "machine": here}
            (out / f"s{seed}-{variant}.json").write_text(json.dumps(record, indent=1) + "\n")
            written += 1
    print(f"{written} run(s) recorded in {out}")
    return 0


def load(out: Path) -> dict:
    runs = {}
    for path in sorted(out.glob("s*-*.json")):
        rec = json.loads(path.read_text())
        epochs = [r for r in rec["metrics"] if "train_time_s" in r]
        for w, ev in rec["evals"].items():
            m = ev["masks"]
            runs[rec["seed"], rec["variant"], w] = {
                "masks": {key: decode_mask(m[key], m["n"]) for key, _ in COLUMNS}, "n": m["n"],
                "digest": m["images_sha1"], "train_time": sum(r["train_time_s"] for r in epochs),
                "val": (epochs[-1].get("val_clean"), epochs[-1].get("val_robust")),
                # the code that evaluated it is the report's commit, not the one that collected it
                "machine": {**rec["machine"], "advrep_commit": ev["git_commit"][:7]}}
    return runs


def pct(mask) -> str:
    k, n = int(mask.sum()), len(mask)
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def diff(a, b) -> str:
    """b − a in points, exact McNemar p, images robust for b only / a only."""
    only_b, only_a = int((b & ~a).sum()), int((a & ~b).sum())
    return f"{100 * (only_b - only_a) / len(a):+.1f} (p = {mcnemar_exact(only_b, only_a):.2g}; {only_b}/{only_a})"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return markdown_table([dict(zip(header, r)) for r in rows])


def tables(out: Path) -> int:
    runs = load(out)
    if not runs:
        raise SystemExit(f"no records in {out}")
    digests = {r["digest"] for r in runs.values()}
    if len(digests) != 1:
        raise SystemExit(f"the reports were made on different images ({len(digests)} digests)")
    n = next(iter(runs.values()))["n"]
    have = [(s, v) for s in SEEDS for v in VARIANTS if (s, v, "raw") in runs]
    missing = [f"{v} seed {s}" for s in SEEDS for v in VARIANTS if (s, v) not in have]
    machines = {json.dumps(r["machine"], sort_keys=True) for r in runs.values()}
    lines = [f"All weight sets on the same {n} test images (one digest)"
             + (f"; not yet run: {', '.join(missing)}." if missing else "."), ""]
    for m in sorted(machines):
        m = json.loads(m)
        who = [f"{v} s{s}" for s, v in have if runs[s, v, "raw"]["machine"] == m]
        lines.append(f"- {', '.join(who)}: {m['cpu']}, native bf16: {'yes' if m['native_bf16'] else 'no'}, "
                     f"torch {m['torch']}, advrep {m['advrep_commit']}")
    lines.append("")
    main_rows = []
    for s, v in have:
        method, gamma = VARIANTS[v]
        for w in ("raw", "ema"):
            r = runs[s, v, w]
            val = " / ".join(f"{100 * x:.1f}" if x is not None else "–" for x in r["val"])
            main_rows.append([method, f"{gamma:g}", str(s), w, *(pct(r["masks"][k]) for k, _ in COLUMNS), val,
                              f"{r['train_time']:.0f} s"])
    lines += table(["method", "AWP γ", "seed", "weights", *(t for _, t in COLUMNS), "last val. clean / PGD-10 (EMA)",
                    "train time"], main_rows)
    lines += ["", "EMA − raw (points; exact McNemar p; images robust for EMA only / raw only)", ""]
    lines += table(["method", "AWP γ", "seed", *(t for _, t in COLUMNS)],
                   [[VARIANTS[v][0], f"{VARIANTS[v][1]:g}", str(s),
                     *(diff(runs[s, v, "raw"]["masks"][k], runs[s, v, "ema"]["masks"][k]) for k, _ in COLUMNS)]
                    for s, v in have])
    pairs = [(s, m) for s in SEEDS for m in ("pgd-at", "trades") if (s, m) in have and (s, m + "+awp") in have]
    if pairs:
        lines += ["", "AWP − no AWP, same weights (points; McNemar p; robust with AWP only / without only)", ""]
        lines += table(["method", "seed", "weights", *(t for _, t in COLUMNS)],
                       [[m, str(s), w, *(diff(runs[s, m, w]["masks"][k], runs[s, m + "+awp", w]["masks"][k])
                                         for k, _ in COLUMNS)]
                        for s, m in pairs for w in ("raw", "ema")])
    both = [v for v in VARIANTS if all((s, v) in have for s in SEEDS)]
    if both:
        lines += ["", f"Means over the {len(SEEDS)} seeds (%)", ""]
        lines += table(["method", "AWP γ", "weights", *(t for _, t in COLUMNS)],
                       [[*(VARIANTS[v][0], f"{VARIANTS[v][1]:g}"), w,
                         *(f"{100 * sum(runs[s, v, w]['masks'][k].float().mean().item() for s in SEEDS) / len(SEEDS):.1f}"
                           for k, _ in COLUMNS)]
                        for v in both for w in ("raw", "ema")])
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="record the finished runs of RUNS in OUT")
    c.add_argument("runs", type=Path)
    c.add_argument("out", type=Path)
    t = sub.add_parser("table", help="the Markdown tables of the records in OUT")
    t.add_argument("out", type=Path)
    args = ap.parse_args(argv)
    return collect(args.runs, args.out) if args.command == "collect" else tables(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
