"""``advrep card RUN``: a RobustBench-style model card from a run's ``report.json``.

RobustBench describes each model of its leaderboards with a ``model_info`` JSON file (its
``model_info/<dataset>/<threat_model>/<Name>.json``): ``link``, ``name``, ``authors``,
``additional_data``, ``number_forward_passes``, ``dataset``, ``venue``, ``architecture``, ``eps``,
``clean_acc``, ``reported``, and ``autoattack_acc`` (Linf, L2, L1) or ``corruptions_acc``
(corruptions), accuracies as percent strings with two decimals (``"85.34"``). The card fills
what the report knows and leaves the paper's facts (``link``, ``name``, ``authors``, ``venue``,
``reported``) as null for the author to write.

- ``number_forward_passes``: forward passes the model needs for one prediction, as RobustBench
  means it (1 for every advrep model: none is randomized or ensembled at test time). What the
  *evaluation* cost is under ``advrep.cost`` (each attack's passes).
- ``autoattack_acc`` only from AutoAttack's ``standard`` version (the one RobustBench runs);
  ``corruptions_acc`` only from the official CIFAR-10-C/100-C files (the 15 benchmark
  corruptions), never from advrep's generated set.
- ``advrep``: what else a reader needs: the AutoAttack code and version that ran, the number of
  images, whether the numbers are comparable with RobustBench's and, if not, why (fewer than the
  full test set, another AutoAttack version, no AutoAttack at all).

Example::

    advrep card runs/trades-cifar10-wrn-34-10            # writes runs/.../model_info.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import fileops
from .errors import ConfigError

KEYS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture",
        "eps", "clean_acc", "reported")
# the full test sets RobustBench evaluates on (its leaderboards: 10,000 images; ImageNet 5,000)
FULL_TEST = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}
OWN_DATA = {"cifar10", "cifar100", "svhn", "mnist", "fashion-mnist", "tiny-imagenet"}


def architecture_name(arch: str) -> str:
    """advrep's architecture names in RobustBench's spelling (``wrn-34-10`` -> ``WideResNet-34-10``)."""
    m = re.fullmatch(r"wrn-(\d+)-(\d+)", arch)
    if m:
        return f"WideResNet-{m.group(1)}-{m.group(2)}"
    m = re.fullmatch(r"(preact-)?resnet(\d+)", arch)
    if m:
        return f"{'PreAct' if m.group(1) else ''}ResNet-{m.group(2)}"
    return {"small-cnn": "SmallCNN"}.get(arch, arch)


def eps_text(norm: str, eps: float) -> str:
    if norm == "Linf":
        k = eps * 255
        return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"
    return f"{eps:g}"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def card(report: dict) -> dict:
    """The model_info mapping of one ``report.json``."""
    for key in ("clean_acc", "threat_model", "eps", "n"):
        if key not in report:
            raise ConfigError(f"the report has no '{key}'; it is not an advrep robustness report (run advrep eval)")
    dataset = report.get("dataset")
    info = {"link": None, "name": None, "authors": None,
            "additional_data": False if dataset in OWN_DATA else None,
            "number_forward_passes": 1, "dataset": dataset, "venue": None,
            "architecture": architecture_name(report.get("architecture") or "unknown"),
            "eps": eps_text(report["threat_model"], report["eps"]), "clean_acc": _pct(report["clean_acc"]),
            "reported": None}
    why_not = []
    aa = report.get("autoattack")
    if aa and "autoattack_acc" in report and aa.get("version") == "standard":
        info["autoattack_acc"] = _pct(report["autoattack_acc"])
    elif aa:
        why_not.append(f"AutoAttack ran in its '{aa.get('version')}' version; RobustBench's autoattack_acc is the "
                       "standard version's")
    else:
        why_not.append("no AutoAttack in the report: advrep eval RUN --eval.attacks=[autoattack] gives autoattack_acc")
    if "corruptions_acc" in report:
        info["corruptions_acc"] = _pct(report["corruptions_acc"])
    full = FULL_TEST.get(dataset)
    if full and report["n"] < full:
        why_not.append(f"{report['n']} of the {full} test images RobustBench evaluates")
    if full is None:
        why_not.append(f"RobustBench has no {dataset} leaderboard")
    info["advrep"] = {
        "threat_model": report["threat_model"], "eps": report["eps"], "n": report["n"],
        "autoattack": ({k: aa.get(k) for k in ("backend", "backend_version", "version", "attacks")} if aa else None),
        "robust_acc_worst_case": report.get("robust_acc"),
        "corruptions_generated_acc": report.get("corruptions_generated_acc"),
        "method": report.get("method"), "checkpoint": report.get("checkpoint"),
        "advrep_version": report.get("advrep_version"), "torch_version": report.get("torch_version"),
        "evaluation_cost": {k: (report.get("cost") or {}).get(k) for k in ("forward", "backward")},
        "comparable_with_robustbench": not why_not, "not_comparable_because": why_not,
        "to_fill": ["link", "name", "authors", "venue", "reported"],
    }
    return info


def write_card(target: Path, out: Path | None = None) -> tuple[dict, Path]:
    """The card of ``target`` (a run directory, or a folder or file with report.json), written to
    ``out`` (default: ``model_info.json`` beside the report)."""
    target = Path(target)
    path = target / "report.json" if target.is_dir() else target
    if not path.is_file():
        raise ConfigError(f"{path} not found; evaluate first: advrep eval {target}")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not valid JSON; run advrep eval again") from None
    info = card(report)
    out = Path(out) if out else path.parent / "model_info.json"
    fileops.write_text(out, json.dumps(info, indent=2) + "\n")
    return info, out
