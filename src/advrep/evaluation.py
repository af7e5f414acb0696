"""The robustness report: clean, FGSM, PGD-k, CW∞, multi-targeted PGD, Square, AutoAttack,
an eps sweep, common corruptions and the gradient-masking checks, with 95% intervals.

A sample counts as robust under an attack only if it is classified correctly both clean and
under that attack (as AutoAttack and RobustBench count it), and ``worst_case`` counts the
samples that survive every attack that ran: the honest single number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from . import __version__, checks, distributed, fileops, plots, readouts
from .attacks import ATTACKS
from .config import EvalConfig, ThreatConfig
from .errors import CheckpointError, ConfigError
from .readouts import Probe
from .stats import wilson_interval
from .tensors import images, to_float, to_uint8


def check_labels(model, x: torch.Tensor, y, device) -> int:
    """The number of classes the model outputs (its logits on the first image tell), after a
    ConfigError unless ``y`` holds one integer label per image of ``x``, each one of them."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ConfigError(f"labels must be a 1-D integer tensor, got {getattr(y, 'dtype', type(y).__name__)} "
                          f"of shape {tuple(getattr(y, 'shape', ()))}")
    if len(y) != len(x):
        raise ConfigError(f"{len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise ConfigError("no images to evaluate")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(to_float(x[:1].to(device)))
    except RuntimeError as e:
        raise ConfigError(f"the model cannot run on images of shape {tuple(x.shape[1:])} "
                          f"({str(e).splitlines()[0]})") from None
    finally:
        model.train(was)
    if logits.dim() != 2 or len(logits) != 1:
        raise ConfigError(f"the model must map images to logits (N, K); it returned shape {tuple(logits.shape)}")
    k = logits.shape[1]
    if int(y.min()) < 0 or int(y.max()) >= k:
        raise ConfigError(f"label {int(y.max()) if y.max() >= k else int(y.min())} is outside the {k} classes the "
                          f"model outputs (0..{k - 1})")
    return k


def attack_label(name: str, ev: EvalConfig) -> str:
    """The report's row label of ``clean``, ``worst_case`` or a registered attack."""
    return {"clean": "clean", "worst_case": "worst case"}.get(name) or ATTACKS.get(name).label(ev)


def attacks_for(model, ev: EvalConfig) -> list[str]:
    """``ev.attacks`` checked against the registry and ``model``, plus the adaptive attacks the
    model calls for (``ra-soft`` for reverse attention), in order."""
    names = list(ev.attacks)
    for name in names:
        ATTACKS.get(name).check_model(model)
    return names + [n for n in ATTACKS.names() if n not in names and ATTACKS.get(n).added_for(model, names)]


def correctness(model, x: torch.Tensor, y: torch.Tensor, threat: ThreatConfig, ev: EvalConfig,
                device, progress: bool = True, desc: str = "eval", keep: str | None = None,
                source: str = "the model") -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Per-sample correctness (bool, CPU) for clean data and each batched attack in
    ``ev.attacks``, and the adversarial examples of the attack named ``keep`` (on ``device``).
    Non-finite clean logits stop it with one line naming ``source``: nothing would be measured."""
    names = [a for a in ev.attacks if ATTACKS.get(a).batched]
    was_training = model.training
    model.eval()
    num_classes = None
    out: dict[str, list[torch.Tensor]] = {name: [] for name in ("clean", *names)}
    kept: list[torch.Tensor] = []
    try:
        for start in tqdm(range(0, len(x), ev.batch_size), desc=desc, disable=None if progress else True,
                          leave=False):
            xb = to_float(x[start:start + ev.batch_size].to(device))
            yb = y[start:start + ev.batch_size].to(device)
            lo, hi = distributed.shard(len(xb))  # under torchrun each rank attacks its share; results gathered
            total, xb, yb = len(xb), xb[lo:hi], yb[lo:hi]
            with torch.no_grad():
                logits = model(xb)
            if not bool(torch.isfinite(logits).all()):
                raise CheckpointError(f"{source} gives non-finite logits on clean test images (from image {start}): "
                                      "its weights are NaN or infinite; evaluate another checkpoint")
            num_classes = logits.shape[1]
            clean = logits.argmax(1) == yb
            out["clean"].append(distributed.gather_cat(clean).cpu())
            for name in names:
                with distributed.global_draws(lo, hi, total):
                    x_adv = ATTACKS.get(name).perturb(model, xb, yb, threat=threat, ev=ev,
                                                      num_classes=num_classes, device=device)
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
    """Run the evaluation on the first ``ev.n`` images of (``x``, ``y``); return the report.

    ``x`` is a batch of images (N, C, H, W), uint8 or floats in [0, 1] (checked, never rescaled
    by guess), ``y`` integer labels of the classes the model outputs (checked on one image).

    ``readout_names`` run on the same images, reusing the evaluation's PGD examples;
    ``state_dir`` is where attacks that run over the whole set (AutoAttack) keep their progress,
    each in ``<state_dir>/<name>/``, so an interrupted evaluation resumes; ``surrogate``
    returns the standard-trained model of the transfer check (called only when it runs).
    """
    if ev.n is not None:
        if ev.n <= 0:
            raise ConfigError(f"eval.n must be positive, got {ev.n}")
        x, y = x[:ev.n], y[:ev.n]
    x = images(x)
    check_labels(model, x, y, device)
    ev = replace(ev, attacks=attacks_for(model, ev))
    for name in ev.attacks:
        ATTACKS.get(name).check(threat, ev)  # a setting under which an attack cannot attack: stop now
    t0 = time.time()
    masks, x_pgd = correctness(model, x, y, threat, ev, device, progress, keep="pgd" if readout_names else None,
                               source=(context or {}).get("checkpoint") or "the model")
    extra: dict = {}
    for name in (a for a in ev.attacks if not ATTACKS.get(a).batched):
        lo, hi = distributed.shard(len(x))  # under torchrun each rank runs it on its share
        mask, extra[name] = ATTACKS.get(name).robust(
            model, to_float(x[lo:hi].to(device)), y[lo:hi].to(device), threat=threat, ev=ev, device=device,
            state_dir=distributed.rank_dir(Path(state_dir) / name if state_dir else None),
            fingerprint=json.dumps(context or {}, sort_keys=True), progress=progress)
        masks[name] = distributed.gather_cat(mask)
        extra[f"{name}_acc"] = masks[name].float().mean().item()
    rows = summarize(masks, ev)
    if ev.eps_sweep:
        extra["eps_sweep"] = eps_sweep(model, x, y, threat, ev, device)
    if ev.checks:
        k = min(ev.checks_n, len(x))
        extra["checks"] = checks.run(model, to_float(x[:k].to(device)), y[:k].to(device), threat=threat,
                                     ev=ev, device=device, whitebox=checks.whitebox_mask(masks)[:k],
                                     surrogate=surrogate() if surrogate else None)
    if ev.corruptions != "none":
        if ev.corruptions == "official" and not ev.corruptions_dir:
            raise ConfigError("eval.corruptions=official needs eval.corruptions_dir, the CIFAR-10-C / "
                              "CIFAR-100-C folder (<corruption>.npy + labels.npy)")
        from . import corruptions

        extra["corruptions"] = corruptions.evaluate(  # 8-bit images, as the reference corruptions are made
            model, to_uint8(x), y, device=device, batch_size=ev.batch_size, progress=progress,
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
        # no attack, no robust accuracy: the worst case over the attacks that ran, if any did
        **({"robust_acc": rows.get("worst_case", rows[ev.attacks[0]])["acc"]} if len(rows) > 1 else {}),
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
    with fileops.storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    fileops.write_text(directory / "report.json", json.dumps(report, indent=1))
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
            plots.save(readouts.PLOTS[name](values), directory / f"{name}.png")
            notes += ["", f"![{name}]({name}.png)", ""]
    if notes:
        notes = ["", "## Read-outs", "", *notes]
    fileops.write_text(directory / "report.md", "\n".join([title, "", *body, "", *facts, *sections, *notes, ""]))


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
