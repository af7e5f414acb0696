"""The robustness report: clean, FGSM, PGD-k and CW∞ accuracy with 95% confidence intervals.

A sample counts as robust under an attack only if it is classified correctly both clean and
under that attack (as AutoAttack and RobustBench count it), and ``worst_case`` counts the
samples that survive every attack that ran: the honest single number.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, attacks, readouts
from .config import EvalConfig, ThreatConfig
from .errors import ConfigError
from .readouts import Probe

ATTACKS = ("fgsm", "pgd", "cw")


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (stays inside [0, 1] at 0% and 100%)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def attack_label(name: str, ev: EvalConfig) -> str:
    return {"clean": "clean", "fgsm": "FGSM", "pgd": f"PGD-{ev.pgd_steps}",
            "cw": f"CW∞-{ev.cw_steps}"}[name]


def run_attack(name: str, model, x, y, threat: ThreatConfig, ev: EvalConfig) -> torch.Tensor:
    common = dict(eps=threat.eps, norm=threat.norm)
    if name == "fgsm":
        return attacks.fgsm(model, x, y, **common)
    if name in ("pgd", "cw"):
        return attacks.pgd(model, x, y, step_size=ev.pgd_step_size, restarts=ev.pgd_restarts,
                           steps=ev.pgd_steps if name == "pgd" else ev.cw_steps,
                           loss="ce" if name == "pgd" else "cw", random_start="uniform", **common)
    raise ConfigError(f"unknown evaluation attack '{name}'; choose from: {', '.join(ATTACKS)}")


def correctness(model, x: torch.Tensor, y: torch.Tensor, threat: ThreatConfig, ev: EvalConfig,
                device, progress: bool = True, desc: str = "eval",
                keep: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-sample correctness (bool, CPU) for clean data and each attack in ``ev.attacks``, and
    the adversarial examples of the attack named ``keep`` (on ``device``), if any."""
    for name in ev.attacks:
        if name not in ATTACKS:
            raise ConfigError(f"unknown evaluation attack '{name}'; choose from: {', '.join(ATTACKS)}")
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ("clean", *ev.attacks)}
    kept: list[torch.Tensor] = []
    batches = range(0, len(x), ev.batch_size)
    try:
        for start in tqdm(batches, desc=desc, disable=None if progress else True, leave=False):
            xb = x[start:start + ev.batch_size].to(device).float().div(255)
            yb = y[start:start + ev.batch_size].to(device)
            with torch.no_grad():
                clean = model(xb).argmax(1) == yb
            out["clean"].append(clean.cpu())
            for name in ev.attacks:
                x_adv = run_attack(name, model, xb, yb, threat, ev)
                if name == keep:
                    kept.append(x_adv)
                with torch.no_grad():
                    out[name].append((clean & (model(x_adv).argmax(1) == yb)).cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in out.items()}, (torch.cat(kept) if kept else None)


def summarize(masks: dict[str, torch.Tensor], ev: EvalConfig) -> dict[str, dict]:
    rows = {}
    for name, mask in masks.items():
        rows[name] = _row(attack_label(name, ev), mask)
    if len(masks) > 2:
        rows["worst_case"] = _row("worst case", torch.stack(list(masks.values())).all(0))
    return rows


def _row(label: str, mask: torch.Tensor) -> dict:
    n, k = mask.numel(), int(mask.sum())
    return {"label": label, "acc": k / n, "correct": k, "n": n, "ci95": list(wilson_interval(k, n))}


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, threat: ThreatConfig, ev: EvalConfig,
             device, progress: bool = True, context: dict | None = None, readout_names=()) -> dict:
    """Run the evaluation on the first ``ev.n`` images of (uint8 ``x``, ``y``); return the report.

    ``readout_names`` run on the same images, reusing the evaluation's PGD examples."""
    if ev.n is not None:
        if ev.n <= 0:
            raise ConfigError(f"eval.n must be positive, got {ev.n}")
        x, y = x[:ev.n], y[:ev.n]
    t0 = time.time()
    masks, x_pgd = correctness(model, x, y, threat, ev, device, progress, keep="pgd" if readout_names else None)
    rows = summarize(masks, ev)
    extra = {}
    if readout_names:
        probe = Probe(model, x, y, norm=threat.norm, eps=threat.eps, step_size=ev.pgd_step_size,
                      steps=ev.pgd_steps, device=device, batch_size=ev.batch_size, x_adv=x_pgd)
        extra["readouts"] = readouts.run(readout_names, probe)
    report = {
        **(context or {}),
        "clean_acc": rows["clean"]["acc"],
        "eps": threat.eps,
        "threat_model": threat.norm,
        "n": len(x),
        "attacks": rows,
        "robust_acc": rows.get("worst_case", rows.get(ev.attacks[0] if ev.attacks else "clean"))["acc"],
        "eval": asdict(ev),
        "advrep_version": __version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "time_s": round(time.time() - t0, 2),
        **extra,
    }
    return report


def format_table(report: dict) -> str:
    lines = [f"{'attack':<12} {'accuracy':>9}   95% CI", "-" * 36]
    for row in report["attacks"].values():
        lo, hi = row["ci95"]
        lines.append(f"{row['label']:<12} {100 * row['acc']:8.2f}%   [{100 * lo:.1f}, {100 * hi:.1f}]")
    eps = report["eps"]
    eps_text = f"{eps * 255:.3g}/255" if report["threat_model"] == "Linf" and eps < 0.1 else f"{eps:g}"
    lines.append(f"({report['n']} test images, {report['threat_model']} eps {eps_text})")
    return "\n".join(lines)


def write_report(directory: str | Path, report: dict) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    title = f"# Robustness report: {report.get('architecture', 'model')}"
    if "method" in report:
        title += f" trained with {report['method']}"
    body = ["| attack | accuracy | 95% CI | n |", "|---|---|---|---|"]
    for row in report["attacks"].values():
        lo, hi = row["ci95"]
        body.append(f"| {row['label']} | {100 * row['acc']:.2f}% | {100 * lo:.1f}–{100 * hi:.1f}% | {row['n']} |")
    facts = [f"- {k}: {report[k]}" for k in ("dataset", "checkpoint", "threat_model", "eps", "device",
                                             "advrep_version", "torch_version", "time_s") if k in report]
    notes = []
    for name, values in report.get("readouts", {}).items():
        notes += [f"- {name}: " + ", ".join(f"{k} = {_short(v)}" for k, v in values.items())]
        if name in readouts.PLOTS:
            _save_figure(readouts.PLOTS[name](values), directory / f"{name}.png")
            notes += ["", f"![{name}]({name}.png)", ""]
    if notes:
        notes = ["", "## Read-outs", "", *notes]
    (directory / "report.md").write_text("\n".join([title, "", *body, "", *facts, *notes, ""]))


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
