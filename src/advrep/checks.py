"""Gradient-masking checks: signs that a robustness number comes from broken gradients.

Run by default by ``advrep eval`` on the first ``eval.checks_n`` evaluated images; each check
is a named pass/fail flag with the numbers behind it (after Carlini et al., "On Evaluating
Adversarial Robustness", 2019, and Athalye et al., ICML 2018):

- ``eps_zero``: PGD at eps = 0 gives exactly the clean accuracy;
- ``eps_monotone``: accuracy never rises as eps grows (multiples of eps, PGD);
- ``large_eps``: at a large eps (8·eps, capped at 1 for Linf) PGD drives accuracy to at most 5%;
- ``more_steps``: PGD with 5x the steps and 3 restarts is not weaker than PGD-k;
- ``black_box``: the black-box Square attack does not beat the white-box attacks (skipped, with
  a warning, where the installed Square has no version for the norm);
- ``transfer``: PGD transferred from a standard-trained surrogate does not beat them either.

A tolerance of ``max(2 samples, 1 point)`` absorbs the attacks' own randomness; masking shows
as gaps far larger than that.
"""

from __future__ import annotations

import warnings

import torch

from . import attacks
from .attacks import ATTACKS
from .config import EvalConfig, ThreatConfig
from .errors import ConfigError

LARGE_EPS_MAX_ACC = 0.05


def _correct(model, x, y, batch_size) -> torch.Tensor:
    """Per-sample correctness of ``model`` on ``x`` (bool, CPU)."""
    with torch.no_grad():
        return torch.cat([(model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).cpu()
                          for s in range(0, len(x), batch_size)])


def _batched(fn, x, y, batch_size):
    return torch.cat([fn(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, len(x), batch_size)])


def _pgd(model, x, y, *, eps, norm, steps, restarts, batch_size):
    step = 2.5 * eps / max(steps, 1)  # Madry et al.'s rule: the steps can cross the ball 2.5 times
    return _batched(lambda xb, yb: attacks.pgd(model, xb, yb, eps=eps, step_size=step, steps=steps, norm=norm,
                                               restarts=restarts), x, y, batch_size)


def run(model, x: torch.Tensor, y: torch.Tensor, *, threat: ThreatConfig, ev: EvalConfig, device,
        whitebox: torch.Tensor, surrogate=None) -> dict:
    """The checks on float images ``x`` (on ``device``); ``whitebox`` is the per-sample worst
    case of the evaluation's white-box attacks on the same images."""
    was_training = model.training
    model.eval()
    try:
        return _run(model, x, y, threat, ev, device, whitebox, surrogate)
    finally:
        model.train(was_training)


def _run(model, x, y, threat, ev, device, whitebox, surrogate) -> dict:
    n, bs, eps, norm = len(x), ev.batch_size, threat.eps, threat.norm
    tol = max(2 / n, 0.01)
    clean = _correct(model, x, y, bs)  # once: a sample counts as robust only if also correct clean
    acc = lambda x_adv: (clean & _correct(model, x_adv, y, bs)).float().mean().item()  # noqa: E731
    clean_acc = clean.float().mean().item()
    white = whitebox.float().mean().item()
    results = {}

    at_zero = acc(_pgd(model, x, y, eps=0.0, norm=norm, steps=ev.pgd_steps, restarts=1, batch_size=bs))
    results["eps_zero"] = {"passed": at_zero == clean_acc, "clean_acc": clean_acc, "pgd_acc_at_eps_0": at_zero}

    cap = 1.0 if norm == "Linf" else float("inf")
    sweep = []
    for e in dict.fromkeys(min(eps * mult, cap) for mult in (0.25, 0.5, 1, 2, 4, 8)):  # the cap once
        sweep.append({"eps": e, "acc": acc(_pgd(model, x, y, eps=e, norm=norm, steps=ev.pgd_steps, restarts=1,
                                                 batch_size=bs))})
    rises = [(a["eps"], b["eps"]) for a, b in zip(sweep, sweep[1:]) if b["acc"] > a["acc"] + tol]
    results["eps_monotone"] = {"passed": not rises, "sweep": sweep, "rises": rises}
    results["large_eps"] = {"passed": sweep[-1]["acc"] <= LARGE_EPS_MAX_ACC, "eps": sweep[-1]["eps"],
                            "acc": sweep[-1]["acc"], "threshold": LARGE_EPS_MAX_ACC}

    weak = next(r["acc"] for r in sweep if r["eps"] == min(eps, cap))  # the sweep's PGD-k at eps itself
    strong = acc(_pgd(model, x, y, eps=eps, norm=norm, steps=5 * ev.pgd_steps, restarts=3, batch_size=bs))
    results["more_steps"] = {"passed": strong <= weak + tol, "pgd_acc": weak, "stronger_pgd_acc": strong,
                             "steps": [ev.pgd_steps, 5 * ev.pgd_steps], "restarts": [1, 3]}

    try:
        x_sq = _batched(lambda xb, yb: attacks.square(model, xb, yb, eps=eps, norm=norm, queries=ev.square_queries,
                                                      device=device), x, y, bs)
    except ConfigError as e:  # the installed Square has no such norm: the check cannot run, and says so
        warnings.warn(f"black_box check skipped: {e}", stacklevel=2)
    else:
        sq = acc(x_sq)
        results["black_box"] = {"passed": sq >= white - tol, "square_acc": sq, "whitebox_acc": white,
                                "queries": ev.square_queries}

    if surrogate is not None:
        surrogate.eval()
        x_tr = _pgd(surrogate, x, y, eps=eps, norm=norm, steps=ev.pgd_steps, restarts=1, batch_size=bs)
        tr = acc(x_tr)
        results["transfer"] = {"passed": tr >= white - tol, "transfer_acc": tr, "whitebox_acc": white}
    for r in results.values():
        r["tolerance"] = tol
    return results


def summary(results: dict) -> str:
    failed = [name for name, r in results.items() if not r["passed"]]
    if not failed:
        return f"gradient-masking checks: all {len(results)} passed ({', '.join(results)})"
    return (f"gradient-masking checks: FAILED {', '.join(failed)} "
            f"({len(results) - len(failed)} of {len(results)} passed); see report.json 'checks'")


def whitebox_mask(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case over the white-box attacks in ``masks`` (clean if none ran):
    the registered attacks marked ``whitebox``."""
    names = [k for k in masks if k != "clean" and ATTACKS.get(k).whitebox]
    return torch.stack([masks[k] for k in names] or [masks["clean"]]).all(0)
