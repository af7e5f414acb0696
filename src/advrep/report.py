"""The report as text: the table ``advrep eval`` prints (:func:`format_table`) and
``report.json`` / ``report.md`` with the read-outs' pictures (:func:`write_report`)."""

from __future__ import annotations

import json
from pathlib import Path

from . import checks, fileops, plots, readouts
from .threat import threat_name

def _cost_cell(c: dict | None) -> str:
    if not c:
        return ""
    return f"{c['forward_per_image']:g}+{c['backward_per_image']:g}  {c['wall_s']:.1f} s"


def _sections(report: dict) -> list[tuple[str, dict, dict]]:
    """``(label suffix, attack rows, their costs)`` of the main threat model, then of each other."""
    main = ("", report["attacks"], (report.get("cost") or {}).get("attacks", {}))
    return [main] + [(f" ({sec['name']})", sec["attacks"], sec.get("cost", {}))
                     for sec in report.get("threats", [])[1:]]


def format_table(report: dict) -> str:
    sections = _sections(report)
    width = max(20, *(len(row["label"]) + len(suffix) for suffix, rows, _ in sections for row in rows.values()))
    lines = [f"{'attack':<{width}} {'accuracy':>9}   {'95% CI':<13} passes/image (fwd+bwd), time",
             "-" * (width + 56)]
    for suffix, rows, costs in sections:
        for name, row in rows.items():
            lo, hi = row["ci95"]
            ci = f"[{100 * lo:.1f}, {100 * hi:.1f}]"
            lines.append(f"{row['label'] + suffix:<{width}} {100 * row['acc']:8.2f}%   {ci:<13} "
                         f"{_cost_cell(costs.get(name))}".rstrip())
    if "robust_to_all" in report:
        row = report["robust_to_all"]
        lo, hi = row["ci95"]
        lines.append(f"{'robust to all':<{width}} {100 * row['acc']:8.2f}%   [{100 * lo:.1f}, {100 * hi:.1f}]  "
                     f"(every attack of {', '.join(sec['name'] for sec in report['threats'])})")
    norm, eps = threat_name(report["threat_model"], report["eps"]).split(" ", 1)
    weights = ", EMA weights" if report.get("weights") == "ema" else ""
    lines.append(f"({report['n']} test images, {norm} eps {eps}{weights})")
    if "autoattack" in report:
        aa = report["autoattack"]
        lines.append(f"AutoAttack: {aa['backend']} {aa['backend_version']}, {aa['version']} "
                     f"({', '.join(aa['attacks'])})")
    if "corruptions" in report:
        from . import corruptions

        lines.append(corruptions.headline(report["corruptions"]))
    if "checks" in report:
        lines.append(checks.summary(report["checks"]))
    return "\n".join(lines)


def write_report(directory: str | Path, report: dict) -> None:
    directory = Path(directory)
    with fileops.storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    fileops.write_text(directory / "report.json", json.dumps(report, indent=1))
    title = f"# Robustness report: {report.get('architecture', 'model')}"
    if report.get("method"):
        title += f" trained with {report['method']}"
    body = ["| attack | accuracy | 95% CI | n | forward passes / image | backward passes / image | time |",
            "|---|---|---|---|---|---|---|"]
    for suffix, rows, costs in _sections(report):
        for name, row in rows.items():
            lo, hi = row["ci95"]
            c = costs.get(name) or {}
            cells = [f"{c['forward_per_image']:g}", f"{c['backward_per_image']:g}", f"{c['wall_s']:.1f} s"] if c \
                else ["", "", ""]
            body.append(f"| {row['label']}{suffix} | {100 * row['acc']:.2f}% | {100 * lo:.1f}–{100 * hi:.1f}% | "
                        f"{row['n']} | " + " | ".join(cells) + " |")
    if "robust_to_all" in report:
        r = report["robust_to_all"]
        body.append(f"| **robust to all** ({', '.join(sec['name'] for sec in report['threats'])}) | "
                    f"{100 * r['acc']:.2f}% | {100 * r['ci95'][0]:.1f}–{100 * r['ci95'][1]:.1f}% | {r['n']} | | | |")
    if "cost" in report:
        c = report["cost"]
        body += ["", f"Cost: {c['forward']} forward and {c['backward']} backward image-passes in all (the cost "
                     f"model's bound: {c['expected']['forward']} and {c['expected']['backward']}); "
                     + ", ".join(f"{k} {v['forward']}+{v['backward']} in {v['wall_s']:.1f} s"
                                 for k, v in c["stages"].items())]
    facts = [f"- {k}: {report[k]}" for k in ("dataset", "checkpoint", "weights", "threat_model", "eps", "device",
                                             "advrep_version", "torch_version", "time_s") if k in report]
    sections = []
    if "checks" in report:
        sections += ["", "## Gradient-masking checks", "", checks.summary(report["checks"]), "",
                     "| check | result | numbers |", "|---|---|---|"]
        for name, r in report["checks"].items():
            numbers = ", ".join(f"{k} = {_short(v)}" for k, v in r.items() if k not in ("passed", "sweep"))
            sections.append(f"| {name} | {'pass' if r['passed'] else '**FAIL**'} | {numbers} |")
    if "eps_sweep" in report:
        sections += ["", "## Accuracy against eps", "", "| eps | accuracy |", "|---|---|"]
        sections += [f"| {r['eps']:.4g} | {100 * r['acc']:.2f}% |" for r in report["eps_sweep"]]
    if "corruptions" in report:
        from . import corruptions

        c = report["corruptions"]
        sections += ["", f"## Common corruptions ({c['source']})", "", corruptions.headline(c), "",
                     "| corruption | " + " | ".join(f"severity {s}" for s in range(1, 6)) + " | mean |",
                     "|---" * 7 + "|"]
        for name, row in c["per_corruption"].items():
            cells = [f"{100 * row[str(s)]:.1f}%" if str(s) in row else "–" for s in range(1, 6)]
            sections.append(f"| {name} | " + " | ".join(cells) + f" | {100 * row['mean']:.1f}% |")
    notes = []
    for name, values in report.get("readouts", {}).items():
        notes += [f"- {name}: " + ", ".join(f"{k} = {_short(v)}" for k, v in values.items())]
        if name in readouts.PLOTS:
            plots.save(readouts.PLOTS[name](values), directory / f"{name}.png")
            notes += ["", f"![{name}]({name}.png)", ""]
    if notes:
        notes = ["", "## Read-outs", "", *notes]
    fileops.write_text(directory / "report.md", "\n".join([title, "", *body, "", *facts, *sections, *notes, ""]))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
