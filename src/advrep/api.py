"""advrep from Python, and what the commands do, as functions: the CLI (:mod:`advrep.cli`) parses
arguments and calls these, so a Python caller and the command line run the same code with the same
defaults (one resolver, :func:`advrep.config.resolve`).

The public names (``advrep.evaluate``, ``advrep.attack``, ``advrep.train``, ``advrep.load``,
``advrep.method``, ``advrep.Threat``) are documented with runnable examples in docs/python.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from pathlib import Path

import torch

from . import config as config_mod
from . import distributed, methods, surrogate
from .errors import ConfigError
from .evaluation import check_labels
from .report import format_table, write_report
from .evaluation import evaluate as evaluate_images
from .factory import model_from_checkpoint
from .methods import readouts_of
from .runs import Run, provenance
from .tensors import images, to_float, to_uint8


def evaluate_checkpoint(ckpt: Path, cfg, splits, device, out_dir: Path, progress: bool = True,
                        model=None, meta: dict | None = None, label: str | None = None,
                        run: Run | None = None) -> dict:
    """Evaluate checkpoint ``ckpt`` (or ``model`` with its ``meta``) under ``cfg`` on the test
    split; write the report to ``out_dir`` (under the writer lock of ``run`` when the report
    goes into that run's directory) and return it. ``label`` is how the report names the
    checkpoint (default: its path). ``cfg.eval.weights`` chooses the checkpoint's weight set (raw,
    ema; auto: EMA when present); the report's ``weights`` says which ran."""
    if model is None:
        model, meta = model_from_checkpoint(ckpt, device, cfg.eval.weights)
    cfg = config_mod.resolve(cfg, splits.info)
    torch.manual_seed(cfg.seed)  # the attacks' random starts: a report is reproducible, whatever ran before
    progress = progress and distributed.is_main()
    if not distributed.is_main():  # the attacks are split over the ranks; checks and corruptions run on rank 0
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, checks=False, corruptions="none"))
    context = {"architecture": meta["arch"], "dataset": splits.info.name, "method": meta.get("method"),
               "checkpoint": label or str(ckpt), "epoch": meta.get("epoch"),
               "weights": meta.get("loaded_weights", "raw"), **provenance()}
    names = [*(readouts_of(meta["method"]) if meta.get("method") else ()), *cfg.eval.readouts]
    writes_run = run is not None and Path(out_dir).resolve() == run.path.resolve() and distributed.is_main()
    # the run's lock from before the attacks: a second writer is told at once, not after the evaluation
    with run.lock() if writes_run else contextlib.nullcontext():
        report = evaluate_images(model, splits.x_test, splits.y_test, threat=cfg.threat, ev=cfg.eval,
                                 device=device, progress=progress, context=context,
                                 readout_names=list(dict.fromkeys(names)), state_dir=out_dir,
                                 surrogate=lambda: surrogate.for_config(cfg, splits, device, progress))
        if distributed.is_main():
            write_report(out_dir, report)
    return report


# ------------------------------------------------------------------------ the Python face


class Report(dict):
    """An evaluation report: the content of ``report.json`` (``clean_acc``, ``attacks`` with
    each attack's accuracy and 95% interval, ``robust_acc`` when an attack ran, ``checks``, ...),
    printed as the table ``advrep eval`` prints."""

    def __str__(self) -> str:
        return format_table(self)

    @property
    def clean_acc(self) -> float:
        return self["clean_acc"]

    @property
    def robust_acc(self) -> float | None:
        """The worst case over the attacks that ran (None if none did)."""
        return self.get("robust_acc")


def _section_tree(sections: dict) -> dict:
    """Keyword arguments as a config tree: ``train={"epochs": 2}``, ``method="trades"``."""
    return {k: v for k, v in sections.items() if v is not None}


def _info_of(model, x: torch.Tensor, y: torch.Tensor, dataset: str | None, device):
    """The dataset facts the defaults come from (after checking ``x`` and ``y`` against the
    model): ``dataset``'s own, or, for images of one's own, their shape with the MNIST family's
    threat model for one channel and CIFAR's for three."""
    from .data import DatasetInfo, info

    x = images(x)
    k = check_labels(model, x, y, device)
    if dataset is not None:
        return info(dataset)
    c = x.shape[1]
    return DatasetInfo("tensors", k, c, x.shape[-1], (0.0,) * c, (1.0,) * c, "mnist" if c == 1 else "cifar",
                       "none" if c == 1 else "crop-flip")


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str | None = None,
             norm: str = "Linf", eps: float | None = None, attacks: list[str] | tuple[str, ...] | None = None,
             n: int | None = None, device: str | torch.device | None = None, seed: int = 0,
             surrogate: torch.nn.Module | None = None, out: str | Path | None = None, progress: bool = False,
             **eval_options) -> Report:
    """The robustness report of any ``model`` that maps images in [0, 1] to logits.

    ``x``: images (N, C, H, W), uint8 or floats in [0, 1] (checked, never rescaled by guess);
    ``y``: integer labels. Defaults are ``advrep eval``'s, resolved by the same code: the threat
    model and the attack steps follow ``dataset`` (``"cifar10"``, ``"mnist"``, ...), or, without
    one, the MNIST family for one-channel images and the CIFAR family for three; ``eps`` alone
    scales the step (``eps`` 4/255 gives PGD steps of 1/255). ``attacks`` default to FGSM, PGD and
    CW (add ``"autoattack"`` for the official AutoAttack); any ``eval`` setting can be passed by
    name (``pgd_steps=50``, ``checks=False``, ``corruptions="none"``). The transfer check runs only
    with a ``surrogate`` (a standard-trained model). ``out``: also write report.json/report.md.

    Example::

        report = advrep.evaluate(model, x_test[:1000], y_test[:1000], dataset="cifar10",
                                 attacks=["pgd", "autoattack"], checks=False)
        print(report)                    # the table
        report.robust_acc                # worst case over the attacks
    """
    from .factory import resolve_device

    device = resolve_device("auto" if device is None else str(device))
    ev = dict(eval_options)
    if attacks is not None:
        ev["attacks"] = list(attacks)
    if n is not None:
        ev["n"] = n
    cfg = config_mod.from_dict({"seed": seed, "threat": {"norm": norm, "eps": eps}, "eval": ev})
    cfg = config_mod.resolve(cfg, _info_of(model, x, y, dataset, device))
    torch.manual_seed(cfg.seed)  # the attacks' random starts, as advrep eval seeds them
    context = {"architecture": type(model).__name__, "dataset": dataset, **provenance()}
    report = evaluate_images(model.to(device), x, y, threat=cfg.threat, ev=cfg.eval, device=device, progress=progress,
                             context=context, state_dir=Path(out) if out else None,
                             surrogate=(lambda: surrogate.to(device)) if surrogate is not None else None)
    if out is not None:
        write_report(out, report)
    return Report(report)


def attack(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str | None = None,
           norm: str = "Linf", eps: float | None = None, device: str | torch.device | None = None,
           **eval_options) -> torch.Tensor:
    """Adversarial examples (floats in [0, 1], on ``device``) of a registered evaluation attack
    (``advrep list attacks``: ``fgsm``, ``pgd``, ``cw``, ``mt``, ``square``, ...), with the
    settings and defaults of ``advrep eval`` (``pgd_steps=50``, ``pgd_restarts=5``, ...). The
    model's train/eval mode is left as it was; the attack runs it in eval mode.

    Example::

        x_adv = advrep.attack("pgd", model, x, y, dataset="cifar10", pgd_steps=50)
    """
    from .attacks import ATTACKS
    from .factory import resolve_device

    device = resolve_device("auto" if device is None else str(device))
    chosen = ATTACKS.get(name)
    if not chosen.batched:
        raise ConfigError(f"attack '{name}' reports robust accuracy, not examples; run it with "
                          f"advrep.evaluate(model, x, y, attacks=['{name}'])")
    cfg = config_mod.from_dict({"threat": {"norm": norm, "eps": eps}, "eval": {**eval_options, "attacks": [name]}})
    info = _info_of(model, x, y, dataset, device)
    cfg = config_mod.resolve(cfg, info)
    x = images(x)
    chosen.check_model(model)
    was = model.training
    model.eval()
    try:
        out = []
        for start in range(0, len(x), cfg.eval.batch_size):
            end = start + cfg.eval.batch_size
            xb, yb = to_float(x[start:end].to(device)), y[start:end].to(device)
            out.append(chosen.perturb(model, xb, yb, threat=cfg.threat, ev=cfg.eval, num_classes=info.num_classes,
                                      device=device))
        return torch.cat(out)
    finally:
        model.train(was)


def method(name: str, terms: dict | None = None, **hparams) -> "methods.Method":
    """A training method (``advrep list methods``; ``base+term`` compositions too) for one's own
    loop: ``x_adv = m.perturb(model, x, y, threat)``, ``loss, metrics = m.objective(model, x,
    x_adv, y, threat)``, with ``threat`` an :class:`advrep.Threat`.

    Example::

        m = advrep.method("trades", beta=6.0)
        threat = advrep.Threat("Linf", eps=8 / 255, step_size=2 / 255, steps=10)
    """
    return methods.create(name, terms=terms, **hparams)


def load(target: str | Path, *, checkpoint: str = "best", device: str | torch.device = "cpu",
         model: torch.nn.Module | None = None, weights: str | None = None) -> torch.nn.Module:
    """The network of a run directory (its ``checkpoint``: best or last) or of a checkpoint file,
    in eval mode on ``device``, ready to evaluate. ``model``: load the weights into this network
    of one's own instead of the one the checkpoint describes. ``weights``: ``"raw"`` (the trained
    weights), ``"ema"`` (their moving average, for runs trained with ``train={"ema": ...}``) or
    None (the EMA weights when the checkpoint has them, as the evaluation does).

    Example::

        model = advrep.load("runs/trades-cifar10-resnet18")
    """
    from . import checkpoint as checkpoint_mod
    from .factory import resolve_device
    from .runs import resolve_checkpoint

    device = resolve_device(str(device))
    stem, _ = resolve_checkpoint(Path(target), checkpoint)
    if model is None:
        return model_from_checkpoint(stem, device, weights)[0]
    state, meta, _ = checkpoint_mod.load(stem, optimizer=False, weights=weights)
    checkpoint_mod.load_state_checked(model, state, str(stem), meta["arch"])
    return model.to(device).eval()


@dataclasses.dataclass
class Result:
    """What :func:`train` gives back: the run directory and what it holds."""

    dir: Path
    summary: dict
    metrics: list
    report: Report | None
    _model: torch.nn.Module | None = dataclasses.field(default=None, repr=False)

    def model(self, checkpoint: str = "best", device: str | torch.device = "cpu",
              weights: str | None = None) -> torch.nn.Module:
        """The trained network (its best checkpoint by default; its EMA weights when it has them,
        unless ``weights="raw"``), in eval mode."""
        return load(self.dir, checkpoint=checkpoint, device=device, model=self._model, weights=weights)


def _tensor_data(data, folder: Path) -> str:
    """User tensors ``(x_train, y_train[, x_test, y_test])`` written once as an npz folder under
    ``folder`` (named by their content, so a run can be resumed and evaluated from its config)."""
    import hashlib

    import numpy as np

    if not isinstance(data, (tuple, list)) or len(data) not in (2, 4):
        raise ConfigError("tensors must be (x_train, y_train, x_test, y_test)")
    parts = []
    for i in range(0, len(data), 2):
        x, y = images(data[i], "the training images" if i == 0 else "the test images"), data[i + 1]
        if x.dtype != torch.uint8:  # advrep trains on 8-bit images: floats must be exactly that
            if not torch.equal(to_float(to_uint8(x)).to(x.dtype), x):
                raise ConfigError("advrep trains on 8-bit images (augmentation works on them): pass uint8 images, "
                                  "or floats that are multiples of 1/255")
            x = to_uint8(x)
        parts.append((x.permute(0, 2, 3, 1).contiguous().cpu().numpy(), torch.as_tensor(y).cpu().numpy()))
    if len(parts) == 1:
        raise ConfigError("tensors need a test split too: (x_train, y_train, x_test, y_test); the evaluation "
                          "reads it")
    digest = hashlib.sha1(b"".join(a.tobytes() for pair in parts for a in pair)).hexdigest()[:16]
    target = folder / digest
    if not (target / "test.npz").is_file():
        tmp = folder / f"{digest}.part-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        for name, (x, y) in zip(("train", "test"), parts):
            np.savez(tmp / f"{name}.npz", x=x, y=y)
        try:
            tmp.rename(target)
        except OSError:  # written by another process meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def train(config: str | Path | None = None, *, out: str | Path | None = None, resume: str | Path | None = None,
          tensors: tuple | None = None, model: torch.nn.Module | None = None, progress: bool = False,
          **sections) -> Result:
    """Train as ``advrep train`` does: a recipe (``config``), sections given by name
    (``method="trades"``, ``train={"epochs": 2}``, ``data={"data_dir": "..."}``), into ``out`` (a
    new run directory) or resuming ``resume``. ``tensors``: data of one's own, ``(x_train, y_train,
    x_test, y_test)`` (uint8 or floats that are multiples of 1/255), kept in the data cache so the
    run can be resumed; ``model``: a network of one's own (then :meth:`Result.model` loads into it).

    Example::

        run = advrep.train("configs/quickstart-mnist.yaml", out="runs/quick", train={"epochs": 1})
        print(run.report)                # the evaluation after training
        model = run.model()              # the best checkpoint
    """
    from .data import cache_dir
    from .runs import Run, free_dir
    from .trainer import Trainer

    tree = _section_tree(sections)
    if tensors is not None:
        tree = config_mod.merge(tree, {"data": {"dataset": "npz",
                                                "data_dir": _tensor_data(tensors, cache_dir() / "tensors")}})
    if resume is not None:
        if config is not None:
            raise ConfigError("resume continues a run with its own config.yaml; drop config")
        run = Run.open(resume)
        cfg = config_mod.from_dict(config_mod.merge(config_mod.read_yaml(run.path / "config.yaml"), tree))
        run_dir = run.path
    else:
        base = config_mod.read_yaml(config) if config is not None else {}
        cfg = config_mod.from_dict(config_mod.merge(base, tree))
        run_dir = Path(out) if out is not None else free_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=resume is not None, progress=progress, log=print if progress else
                      (lambda _: None), model=model)
    try:
        summary = trainer.fit()
        report = None
        if summary["finished"] and trainer.cfg.eval.after_train:
            tag = trainer.cfg.eval.checkpoint
            report = Report(evaluate_checkpoint(Run(run_dir).checkpoint(tag), trainer.cfg, trainer.splits,
                                                trainer.device, run_dir, progress=progress, label=str(run_dir / tag),
                                                run=trainer.run, model=load(run_dir, checkpoint=tag, model=model,
                                                                            weights=trainer.cfg.eval.weights)
                                                if model is not None else None,
                                                meta=_meta_of(run_dir, tag, trainer.cfg.eval.weights)
                                                if model is not None else None))
    finally:
        if trainer.run is not None:
            trainer.run.release()
    return Result(Path(run_dir), summary, Run(run_dir).metrics(), report, model)


def _meta_of(run_dir: Path, tag: str, weights: str | None) -> dict:
    from . import checkpoint as checkpoint_mod
    from .runs import Run

    meta = checkpoint_mod.read_meta(Run(run_dir).checkpoint(tag))
    return {**meta, "loaded_weights": checkpoint_mod.chosen_weights(meta, weights)}
