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

from . import __version__, checks, cost, distributed, readouts
from .attacks import ATTACKS
from .config import EvalConfig, ThreatConfig
from .cost import PassCounter, StageLog
from .errors import CheckpointError, ConfigError
from .masks import MASK_ENCODING, encode_mask, images_digest
from .readouts import Probe
from .stats import wilson_interval
from .tensors import images, pinned, to_device, to_float, to_uint8
from .threat import parse_threat, threat_name


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


def _batches(x, y, ev, device, progress, desc):
    """``(start, xb, yb, lo, hi, total)`` per batch: float images on ``device``, this rank's
    share ``[lo, hi)`` of the batch under torchrun (all of it otherwise)."""
    for start in tqdm(range(0, len(x), ev.batch_size), desc=desc, disable=None if progress else True, leave=False):
        xb = to_float(to_device(x[start:start + ev.batch_size], device))
        yb = to_device(y[start:start + ev.batch_size], device)
        lo, hi = distributed.shard(len(xb))  # under torchrun each rank attacks its share; results gathered
        yield start, xb[lo:hi], yb[lo:hi], lo, hi, len(xb)


def _clean(model, x, y, ev, device, progress, source) -> tuple[torch.Tensor, int]:
    """Per-sample clean correctness (bool, CPU) and the number of classes. Non-finite clean
    logits stop it with one line naming ``source``: nothing would be measured."""
    parts, num_classes = [], None
    for start, xb, yb, *_ in _batches(x, y, ev, device, progress, "clean"):
        with torch.no_grad():
            logits = model(xb)
        if not bool(torch.isfinite(logits).all()):
            raise CheckpointError(f"{source} gives non-finite logits on clean test images (from image {start}): "
                                  "its weights are NaN or infinite; evaluate another checkpoint")
        num_classes = logits.shape[1]
        parts.append(distributed.gather_cat(logits.argmax(1) == yb).cpu())
    return torch.cat(parts), num_classes


def correctness(model, x: torch.Tensor, y: torch.Tensor, threat: ThreatConfig, ev: EvalConfig,
                device, progress: bool = True, desc: str = "eval", keep: str | None = None,
                source: str = "the model", log: StageLog | None = None, costs: dict | None = None,
                clean: tuple[torch.Tensor, int] | None = None, suffix: str = "") -> tuple[dict[str, torch.Tensor],
                                                                                         torch.Tensor | None]:
    """Per-sample correctness (bool, CPU) for clean data and each batched attack in
    ``ev.attacks``, and the adversarial examples of the attack named ``keep`` (on ``device``).

    One attack at a time over all batches, so that ``log`` reports each as a stage and ``costs``
    (when given) receives each one's passes and wall time under its name; ``clean`` (mask,
    classes) reuses a clean pass made before; ``suffix`` follows the attack's label in the log."""
    names = [a for a in ev.attacks if ATTACKS.get(a).batched]
    was_training = model.training
    model.eval()
    log = log or StageLog(None, enabled=False)
    kept: list[torch.Tensor] = []
    x, y = pinned(x, device), pinned(y, device)  # CUDA: each batch then copies without blocking the host
    try:
        if clean is None:
            t = log.start("clean")
            with PassCounter(model) as counter:
                clean = _clean(model, x, y, ev, device, progress, source)
            if costs is not None:
                costs["clean"] = counter.facts(len(x), time.time() - t)
            log.end("clean", t, counter.forward, note=f"{100 * clean[0].float().mean().item():.1f}% correct")
        clean_mask, num_classes = clean
        out = {"clean": clean_mask}
        for name in names:
            stage = attack_label(name, ev) + suffix
            t = log.start(stage)
            parts = []
            with PassCounter(model) as counter:
                for start, xb, yb, lo, hi, total in _batches(x, y, ev, device, progress, stage):
                    with distributed.global_draws(lo, hi, total):
                        x_adv = ATTACKS.get(name).perturb(model, xb, yb, threat=threat, ev=ev,
                                                          num_classes=num_classes, device=device)
                    if name == keep:
                        kept.append(distributed.gather_cat(x_adv))
                    ok = clean_mask[start + lo:start + hi].to(device)
                    with torch.no_grad():
                        parts.append(distributed.gather_cat(ok & (model(x_adv).argmax(1) == yb)).cpu())
            out[name] = torch.cat(parts)
            if costs is not None:
                costs[name] = counter.facts(len(x), time.time() - t)
            log.end(stage, t, counter.forward, counter.backward,
                    note=f"{100 * out[name].float().mean().item():.1f}% robust")
    finally:
        model.train(was_training)
    return out, (torch.cat(kept) if kept else None)


def _resume_fingerprint(context: dict | None) -> str:
    """What of the report's context separates AutoAttack's saved chunks: not the code's version
    (a commit made while an evaluation was stopped used to discard its finished chunks) and not
    the checkpoint's path (a moved run resumes); the attack keys them by the weights and images."""
    code = {"advrep_version", "git_commit", "git_dirty", "checkpoint"}
    return json.dumps({k: v for k, v in (context or {}).items() if k not in code}, sort_keys=True)


def _robust_attacks(model, x, y, threat, ev, device, masks, costs, log, state_dir, context, progress,
                    suffix="") -> dict:
    """The attacks that run over the whole set themselves (AutoAttack): their masks into
    ``masks``, their passes into ``costs``; returns their facts for the report."""
    extra = {}
    for name in (a for a in ev.attacks if not ATTACKS.get(a).batched):
        stage = attack_label(name, ev) + suffix
        t = log.start(stage)
        lo, hi = distributed.shard(len(x))  # under torchrun each rank runs it on its share
        folder = Path(state_dir) / (name + suffix.replace(" ", "_")) if state_dir else None
        with PassCounter(model) as counter:
            mask, extra[name] = ATTACKS.get(name).robust(
                model, to_float(x[lo:hi].to(device)), y[lo:hi].to(device), threat=threat, ev=ev, device=device,
                state_dir=distributed.rank_dir(folder), fingerprint=_resume_fingerprint(context),
                progress=progress)
        masks[name] = distributed.gather_cat(mask)
        costs[name] = counter.facts(len(x), time.time() - t)
        log.end(stage, t, counter.forward, counter.backward,
                note=f"{100 * masks[name].float().mean().item():.1f}% robust")
    return extra


def _row(label: str, mask: torch.Tensor) -> dict:
    n, k = mask.numel(), int(mask.sum())
    return {"label": label, "acc": k / n, "correct": k, "n": n, "ci95": list(wilson_interval(k, n))}


def summarize(masks: dict[str, torch.Tensor], ev: EvalConfig) -> dict[str, dict]:
    rows = {name: _row(attack_label(name, ev), mask) for name, mask in masks.items()}
    if len(masks) > 2:
        rows["worst_case"] = _row("worst case", torch.stack(list(masks.values())).all(0))
    return rows


def worst_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample robustness to every attack in ``masks`` (clean included)."""
    return torch.stack(list(masks.values())).all(0)


def eps_sweep(model, x, y, threat, ev, device) -> list[dict]:
    """PGD accuracy at each eps of ``ev.eps_sweep`` (steps of 2.5·eps/k, as Madry et al.)."""
    out = []
    for eps in ev.eps_sweep:
        swept = ThreatConfig(norm=threat.norm, eps=eps, step_size=threat.step_size, steps=threat.steps)
        sub = EvalConfig(**{**asdict(ev), "attacks": ["pgd"], "pgd_step_size": 2.5 * eps / ev.pgd_steps})
        masks, _ = correctness(model, x, y, swept, sub, device, progress=False)
        out.append({"eps": eps, **_row(f"PGD-{ev.pgd_steps} @ {eps:.4g}", masks["pgd"])})
    return out


# ----------------------------------------------------------------------------- several threat models


def extra_threats(threat: ThreatConfig, ev: EvalConfig) -> list[ThreatConfig]:
    """The threat models of ``ev.threats`` (resolved: each with its eps) other than ``threat``."""
    out = []
    for text in ev.threats:
        norm, eps = parse_threat(text)
        if eps is None:
            raise ConfigError(f"eval.threats: '{text}' has no eps; resolve the config against its dataset first")
        t = ThreatConfig(norm=norm, eps=eps, step_size=threat.step_size, steps=threat.steps)
        if (norm, eps) != (threat.norm, threat.eps) and t not in out:
            out.append(t)
    return out


def _threat_ev(t: ThreatConfig, ev: EvalConfig) -> EvalConfig:
    """The evaluation settings at another threat model: PGD steps of 2.5·eps/k (Madry et al.)."""
    return replace(ev, pgd_step_size=2.5 * t.eps / ev.pgd_steps)


# ----------------------------------------------------------------------------- the report


def _corruption_cells(ev: EvalConfig, channels: int) -> int:
    if ev.corruptions == "none":
        return 0
    from . import corruptions

    if ev.corruptions == "official":
        files = [f for f in Path(ev.corruptions_dir or ".").glob("*.npy") if f.name != "labels.npy"]
        return 5 * len(files)
    return 5 * len(corruptions.available(channels))


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
    ``progress``: tqdm bars on a terminal and, wherever the output goes, the expected cost up
    front and one line per stage on stderr (:mod:`advrep.cost`).
    """
    if ev.n is not None:
        if ev.n <= 0:
            raise ConfigError(f"eval.n must be positive, got {ev.n}")
        x, y = x[:ev.n], y[:ev.n]
    x = images(x)
    num_classes = check_labels(model, x, y, device)
    ev = replace(ev, attacks=attacks_for(model, ev))
    others = extra_threats(threat, ev)
    for t in (threat, *others):
        for name in ev.attacks:
            ATTACKS.get(name).check(t, ev)  # a setting under which an attack cannot attack: stop now
    if ev.corruptions == "official" and not ev.corruptions_dir:
        raise ConfigError("eval.corruptions=official needs eval.corruptions_dir, the CIFAR-10-C / "
                          "CIFAR-100-C folder (<corruption>.npy + labels.npy)")
    suffixes = [(threat, ""), *((t, f" ({threat_name(t.norm, t.eps)})") for t in others)]
    plan = cost.expected(ev, suffixes, num_classes, len(x), _corruption_cells(ev, x.shape[1]), surrogate is not None)
    log = StageLog(plan, enabled=progress and distributed.is_main())
    log.say(cost.summary_line(plan, len(x)))
    t0 = time.time()
    costs: dict = {}
    masks, x_pgd = correctness(model, x, y, threat, ev, device, progress, keep="pgd" if readout_names else None,
                               source=(context or {}).get("checkpoint") or "the model", log=log, costs=costs)
    extra: dict = _robust_attacks(model, x, y, threat, ev, device, masks, costs, log, state_dir, context, progress)
    for name in list(extra):
        extra[f"{name}_acc"] = masks[name].float().mean().item()
    rows = summarize(masks, ev)
    stored = {name: encode_mask(mask) for name, mask in masks.items()}
    if len(masks) > 2:
        stored["worst_case"] = encode_mask(worst_mask(masks))
    if others:
        union = worst_mask(masks)
        sections = [{"threat_model": threat.norm, "eps": threat.eps, "name": threat_name(threat.norm, threat.eps),
                     "robust_acc": rows.get("worst_case", rows[ev.attacks[0]])["acc"] if ev.attacks else None}]
        for t in others:
            t_ev, suffix, t_costs = _threat_ev(t, ev), f" ({threat_name(t.norm, t.eps)})", {}
            t_masks, _ = correctness(model, x, y, t, t_ev, device, progress, log=log, costs=t_costs,
                                     clean=(masks["clean"], num_classes), suffix=suffix)
            t_extra = _robust_attacks(model, x, y, t, t_ev, device, t_masks, t_costs, log, state_dir, context,
                                      progress, suffix=suffix)
            t_rows = summarize(t_masks, t_ev)
            worst = worst_mask(t_masks)
            union &= worst
            key = threat_name(t.norm, t.eps)
            for name, mask in t_masks.items():
                if name != "clean":
                    stored[f"{key}/{name}"] = encode_mask(mask)
            stored[f"{key}/worst_case"] = encode_mask(worst)
            sections.append({"threat_model": t.norm, "eps": t.eps, "name": key, "pgd_step_size": t_ev.pgd_step_size,
                             "attacks": {k: v for k, v in t_rows.items() if k != "clean"},
                             "cost": {k: v for k, v in t_costs.items() if k != "clean"},
                             "robust_acc": _row("worst case", worst)["acc"], **t_extra})
        extra["threats"] = sections
        extra["robust_to_all"] = _row("robust to all threat models", union)
        stored["robust_to_all"] = encode_mask(union)
    stages: dict = {}
    if ev.eps_sweep:
        t = log.start("eps sweep")
        with PassCounter(model) as counter:
            extra["eps_sweep"] = eps_sweep(model, x, y, threat, ev, device)
        stages["eps_sweep"] = counter.facts(len(x), time.time() - t)
        log.end("eps sweep", t, counter.forward, counter.backward)
    if ev.checks:
        k = min(ev.checks_n, len(x))
        reference = None
        if surrogate:
            t = log.start("the transfer check's surrogate (trained once, then cached)")
            reference = surrogate()
            log.end("the transfer check's surrogate (trained once, then cached)", t)
        t = log.start("gradient-masking checks")
        with PassCounter(model) as counter:
            extra["checks"] = checks.run(model, to_float(x[:k].to(device)), y[:k].to(device), threat=threat,
                                         ev=ev, device=device, whitebox=checks.whitebox_mask(masks)[:k],
                                         surrogate=reference)
        stages["checks"] = counter.facts(k, time.time() - t)
        log.end("gradient-masking checks", t, counter.forward, counter.backward, note=checks.summary(extra["checks"]))
    if ev.corruptions != "none":
        from . import corruptions

        t = log.start("corruptions")
        with PassCounter(model) as counter:
            extra["corruptions"] = corruptions.evaluate(  # 8-bit images, as the reference corruptions are made
                model, to_uint8(x), y, device=device, batch_size=ev.batch_size, progress=progress,
                directory=ev.corruptions_dir if ev.corruptions == "official" else None)
        extra.update(corruptions.report_keys(extra["corruptions"]))  # corruptions_acc: official files only
        stages["corruptions"] = counter.facts(len(x), time.time() - t)
        log.end("corruptions", t, counter.forward, counter.backward)
    if readout_names:
        probe = Probe(model, x, y, norm=threat.norm, eps=threat.eps, step_size=ev.pgd_step_size,
                      steps=ev.pgd_steps, device=device, batch_size=ev.batch_size, x_adv=x_pgd)
        extra["readouts"] = readouts.run(readout_names, probe)
    every = [*costs.values(), *stages.values(),
             *(f for sec in extra.get("threats", [])[1:] for f in sec["cost"].values())]
    total = {"forward": sum(f["forward"] for f in every), "backward": sum(f["backward"] for f in every)}
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
        "cost": {"expected": {k: plan[k] for k in ("forward", "backward")}, "attacks": costs, "stages": stages, **total,
                 "note": "image-passes through the model (a batch of B images once = B); expected = the cost "
                         "model's upper bound"},
        "masks": {"encoding": MASK_ENCODING, "n": len(x), "images_sha1": images_digest(x, y), **stored},
        **extra,
    }
