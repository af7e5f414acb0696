"""The robustness report: clean, FGSM, PGD-k, CW∞, multi-targeted PGD, Square, AutoAttack,
an eps sweep, common corruptions and the gradient-masking checks, with 95% intervals.

A sample counts as robust under an attack only if it is classified correctly both clean and
under that attack (as AutoAttack and RobustBench count it), and ``worst_case`` counts the
samples that survive every attack that ran: the honest single number.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import __version__, attacks, checks, distributed, readouts
from .config import EvalConfig, ThreatConfig
from .errors import ConfigError
from .models import ra
from .readouts import Probe

BATCHED = ("fgsm", "pgd", "cw", "mt", "square", "ra-soft")  # attacked batch by batch here
ATTACKS = (*BATCHED, "autoattack")


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
    return {"clean": "clean", "fgsm": "FGSM", "pgd": f"PGD-{ev.pgd_steps}" + (
        f"×{ev.pgd_restarts}" if ev.pgd_restarts > 1 else ""), "cw": f"CW∞-{ev.cw_steps}",
        "mt": f"MT-PGD-{ev.pgd_steps}", "square": f"Square-{ev.square_queries}",
        "ra-soft": f"PGD-{ev.pgd_steps} (RA soft selection)",
        "autoattack": f"AutoAttack ({ev.aa_version})", "worst_case": "worst case"}[name]


def run_attack(name: str, model, x, y, threat: ThreatConfig, ev: EvalConfig, num_classes: int,
               device) -> torch.Tensor:
    common = dict(eps=threat.eps, norm=threat.norm)
    if name == "fgsm":
        return attacks.fgsm(model, x, y, **common)
    if name in ("pgd", "cw"):
        return attacks.pgd(model, x, y, step_size=ev.pgd_step_size, restarts=ev.pgd_restarts,
                           steps=ev.pgd_steps if name == "pgd" else ev.cw_steps,
                           loss="ce" if name == "pgd" else "cw", random_start="uniform", **common)
    if name == "mt":
        return attacks.multi_targeted(model, x, y, step_size=ev.pgd_step_size, steps=ev.pgd_steps,
                                      num_classes=num_classes, **common)
    if name == "square":
        return attacks.square(model, x, y, queries=ev.square_queries, device=device, **common)
    if name == "ra-soft":  # adaptive: differentiate RA's selection through a softmax, score as deployed
        if ra.state(model) is None:
            raise ConfigError("evaluation attack 'ra-soft' needs a model with reverse attention (model.ra)")
        with ra.soft_selection(model):
            return run_attack("pgd", model, x, y, threat, ev, num_classes, device)
    raise ConfigError(f"unknown evaluation attack '{name}'; choose from: {', '.join(ATTACKS)}")


def _check_names(ev: EvalConfig) -> None:
    for name in ev.attacks:
        if name not in ATTACKS:
            raise ConfigError(f"unknown evaluation attack '{name}'; choose from: {', '.join(ATTACKS)}")


def correctness(model, x: torch.Tensor, y: torch.Tensor, threat: ThreatConfig, ev: EvalConfig,
                device, progress: bool = True, desc: str = "eval",
                keep: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-sample correctness (bool, CPU) for clean data and each batched attack in
    ``ev.attacks``, and the adversarial examples of the attack named ``keep`` (on ``device``)."""
    _check_names(ev)
    names = [a for a in ev.attacks if a in BATCHED]
    was_training = model.training
    model.eval()
    num_classes = None
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ("clean", *names)}
    kept: list[torch.Tensor] = []
    try:
        for start in tqdm(range(0, len(x), ev.batch_size), desc=desc, disable=None if progress else True,
                          leave=False):
            xb = x[start:start + ev.batch_size].to(device).float().div(255)
            yb = y[start:start + ev.batch_size].to(device)
            lo, hi = distributed.shard(len(xb))  # under torchrun each rank attacks its share; results gathered
            total, xb, yb = len(xb), xb[lo:hi], yb[lo:hi]
            with torch.no_grad():
                logits = model(xb)
            num_classes = logits.shape[1]
            clean = logits.argmax(1) == yb
            out["clean"].append(distributed.gather_cat(clean).cpu())
            for name in names:
                with distributed.global_draws(lo, hi, total):
                    x_adv = run_attack(name, model, xb, yb, threat, ev, num_classes, device)
                if name == keep:
                    kept.append(distributed.gather_cat(x_adv))
                with torch.no_grad():
                    out[name].append(distributed.gather_cat(clean & (model(x_adv).argmax(1) == yb)).cpu())
    finally:
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in out.items()}, (torch.cat(kept) if kept else None)


def _row(label: str, mask: torch.Tensor) -> dict:
    n, k = mask.numel(), int(mask.sum())
    return {"label": label, "acc": k / n, "correct": k, "n": n, "ci95": list(wilson_interval(k, n))}


def summarize(masks: dict[str, torch.Tensor], ev: EvalConfig) -> dict[str, dict]:
    rows = {name: _row(attack_label(name, ev), mask) for name, mask in masks.items()}
    if len(masks) > 2:
        rows["worst_case"] = _row("worst case", torch.stack(list(masks.values())).all(0))
    return rows


def eps_sweep(model, x, y, threat, ev, device) -> list[dict]:
    """PGD accuracy at each eps of ``ev.eps_sweep`` (steps of 2.5·eps/k, as Madry et al.)."""
    out = []
    for eps in ev.eps_sweep:
        swept = ThreatConfig(norm=threat.norm, eps=eps, step_size=threat.step_size, steps=threat.steps)
        sub = EvalConfig(**{**asdict(ev), "attacks": ["pgd"], "pgd_step_size": 2.5 * eps / ev.pgd_steps})
        masks, _ = correctness(model, x, y, swept, sub, device, progress=False)
        out.append({"eps": eps, **_row(f"PGD-{ev.pgd_steps} @ {eps:.4g}", masks["pgd"])})
    return out


def evaluate(model, x: torch.Tensor, y: torch.Tensor, *, threat: ThreatConfig, ev: EvalConfig,
             device, progress: bool = True, context: dict | None = None, readout_names=(),
             state_dir: Path | None = None, surrogate: Callable[[], torch.nn.Module] | None = None) -> dict:
    """Run the evaluation on the first ``ev.n`` images of (uint8 ``x``, ``y``); return the report.

    ``readout_names`` run on the same images, reusing the evaluation's PGD examples;
    ``state_dir`` keeps AutoAttack's progress so an interrupted run resumes; ``surrogate``
    returns the standard-trained model of the transfer check (called only when it runs).
    """
    if ev.n is not None:
        if ev.n <= 0:
            raise ConfigError(f"eval.n must be positive, got {ev.n}")
        x, y = x[:ev.n], y[:ev.n]
    if ra.state(model) is not None and "pgd" in ev.attacks and "ra-soft" not in ev.attacks:
        ev = replace(ev, attacks=[*ev.attacks, "ra-soft"])  # RA's argmax hides gradients: attack it adaptively
    t0 = time.time()
    masks, x_pgd = correctness(model, x, y, threat, ev, device, progress, keep="pgd" if readout_names else None)
    extra: dict = {}
    if "autoattack" in ev.attacks:
        lo, hi = distributed.shard(len(x))  # under torchrun each rank runs it on its share
        aa_mask, extra["autoattack"] = attacks.autoattack(
            model, x[lo:hi].to(device).float().div(255), y[lo:hi].to(device), eps=threat.eps, norm=threat.norm,
            version=ev.aa_version, attacks=ev.aa_attacks, device=device, batch_size=ev.batch_size,
            state_dir=distributed.rank_dir(state_dir), progress=progress,
            fingerprint=json.dumps(context or {}, sort_keys=True))
        masks["autoattack"] = distributed.gather_cat(aa_mask)
        extra["autoattack_acc"] = masks["autoattack"].float().mean().item()
    rows = summarize(masks, ev)
    if ev.eps_sweep:
        extra["eps_sweep"] = eps_sweep(model, x, y, threat, ev, device)
    if ev.checks:
        k = min(ev.checks_n, len(x))
        extra["checks"] = checks.run(model, x[:k].to(device).float().div(255), y[:k].to(device), threat=threat,
                                     ev=ev, device=device, whitebox=checks.whitebox_mask(masks)[:k],
                                     surrogate=surrogate() if surrogate else None)
    if ev.corruptions != "none":
        if ev.corruptions == "official" and not ev.corruptions_dir:
            raise ConfigError("eval.corruptions=official needs eval.corruptions_dir, the CIFAR-10-C / "
                              "CIFAR-100-C folder (<corruption>.npy + labels.npy)")
        from . import corruptions

        extra["corruptions"] = corruptions.evaluate(
            model, x, y, device=device, batch_size=ev.batch_size, progress=progress,
            directory=ev.corruptions_dir if ev.corruptions == "official" else None)
        extra.update(corruptions.report_keys(extra["corruptions"]))  # corruptions_acc: official files only
    if readout_names:
        probe = Probe(model, x, y, norm=threat.norm, eps=threat.eps, step_size=ev.pgd_step_size,
                      steps=ev.pgd_steps, device=device, batch_size=ev.batch_size, x_adv=x_pgd)
        extra["readouts"] = readouts.run(readout_names, probe)
    return {
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


def format_table(report: dict) -> str:
    width = max(20, *(len(row["label"]) for row in report["attacks"].values()))
    lines = [f"{'attack':<{width}} {'accuracy':>9}   95% CI", "-" * (width + 24)]
    for row in report["attacks"].values():
        lo, hi = row["ci95"]
        lines.append(f"{row['label']:<{width}} {100 * row['acc']:8.2f}%   [{100 * lo:.1f}, {100 * hi:.1f}]")
    eps = report["eps"]
    eps_text = f"{eps * 255:.3g}/255" if report["threat_model"] == "Linf" and eps < 0.1 else f"{eps:g}"
    lines.append(f"({report['n']} test images, {report['threat_model']} eps {eps_text})")
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
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=1))
    title = f"# Robustness report: {report.get('architecture', 'model')}"
    if report.get("method"):
        title += f" trained with {report['method']}"
    body = ["| attack | accuracy | 95% CI | n |", "|---|---|---|---|"]
    for row in report["attacks"].values():
        lo, hi = row["ci95"]
        body.append(f"| {row['label']} | {100 * row['acc']:.2f}% | {100 * lo:.1f}–{100 * hi:.1f}% | {row['n']} |")
    facts = [f"- {k}: {report[k]}" for k in ("dataset", "checkpoint", "threat_model", "eps", "device",
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
            _save_figure(readouts.PLOTS[name](values), directory / f"{name}.png")
            notes += ["", f"![{name}]({name}.png)", ""]
    if notes:
        notes = ["", "## Read-outs", "", *notes]
    (directory / "report.md").write_text("\n".join([title, "", *body, "", *facts, *sections, *notes, ""]))


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
