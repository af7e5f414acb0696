"""Dataclass configs, YAML recipes, ``--key=value`` overrides and validation.

A run is described by one :class:`Config`. It is built from the defaults below, then a YAML
recipe, then flat dotted overrides (``--train.lr=0.05``, ``--method=trades``,
``--method.beta=3``), and checked at every step: an unknown key or a bad value stops with
one line naming the key, the valid choices and, where one is close, the likely intended key.
``None`` in a field documented as "auto" is filled from the dataset by :func:`resolve`, and
the resolved config is what a run directory stores.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .registry import suggest

THREAT_FIELDS = ("norm", "eps", "step_size", "steps")

# Threat models of METHODS.md, keyed by dataset family: (train attack, evaluation PGD).
FAMILY_THREAT = {
    "cifar": dict(eps=8 / 255, step_size=2 / 255, steps=10, eval_steps=20, eval_step_size=2 / 255),
    "mnist": dict(eps=0.3, step_size=0.01, steps=40, eval_steps=40, eval_step_size=0.01),
}


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    data_dir: Optional[str] = None  # a local copy (official or npz layout); None = cache + download
    download: bool = True
    val_size: int = 1000  # held-out training images for best-checkpoint selection (0: best = last)
    split_seed: int = 0  # fixes which training images form the validation slice
    augment: Optional[Literal["none", "crop", "flip", "crop-flip"]] = None  # auto: dataset's default
    train_subset: Optional[int] = None  # train on the first N remaining images (quick runs)


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    head: Optional[str] = None  # auto: the head the method needs, else linear
    head_args: dict = field(default_factory=dict)
    # auto: the dataset's mean/std for CIFAR-like data, none for MNIST-like; or "none",
    # "dataset", or a dataset name whose statistics to use.
    normalization: Optional[str] = None
    # ANCRA's reverse attention (advrep.models.ra): auxiliary heads on the last stage sharing the
    # linear head, channel weighting by the true label (training) or the auxiliary prediction
    # (test time); ra_weight is cr, the weight of the auxiliary losses.
    ra: bool = False
    ra_weight: float = 2.0


@dataclass
class ThreatConfig:
    norm: Literal["Linf", "L2"] = "Linf"
    eps: Optional[float] = None  # auto: 8/255 (CIFAR-like), 0.3 (MNIST-like)
    step_size: Optional[float] = None  # auto: 2/255, 0.01
    steps: Optional[int] = None  # auto: 10, 40


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Literal["piecewise", "cosine", "cyclic", "constant"] = "piecewise"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of epochs
    gamma: float = 0.1
    peak_epoch: float = 0.4  # cyclic: fraction of training at which the lr peaks
    eps_warmup_epochs: float = 0.0  # ramp the training eps linearly from 0 over these epochs
    val_every: int = 1
    val_steps: Optional[int] = None  # PGD steps on the validation slice; auto: threat.steps
    stop_after: Optional[int] = None  # end this invocation after N epochs (resume later)
    readouts: list[str] = field(default_factory=list)  # per-epoch read-outs beyond the method's own
    amp: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"
    # torch.compile the model's forward once per run (a torch.compile mode; reduce-overhead adds CUDA graphs)
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"


@dataclass
class EvalConfig:
    n: Optional[int] = None  # evaluate the first n test images; None = all
    batch_size: int = 500
    # fgsm, pgd, cw (CW-margin PGD), mt (multi-targeted PGD), square (black-box), autoattack,
    # ra-soft (adaptive PGD through reverse attention's selection; added for RA models when pgd runs)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd", "cw"])
    pgd_steps: Optional[int] = None  # auto: 20 (CIFAR-like), 40 (MNIST-like)
    pgd_step_size: Optional[float] = None  # auto: 2/255, 0.01
    pgd_restarts: int = 1
    cw_steps: int = 30
    aa_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    aa_attacks: list[str] = field(default_factory=list)  # for aa_version=custom: apgd-ce, apgd-t, ...
    square_queries: int = 1000
    eps_sweep: list[float] = field(default_factory=list)  # PGD accuracy at each of these eps
    checks: bool = True  # the gradient-masking checks (advrep.checks)
    checks_n: int = 200  # on the first checks_n evaluated images
    surrogate: Optional[str] = None  # standard-trained run/checkpoint for the transfer check; None: train one
    corruptions: Literal["none", "generated", "official"] = "generated"
    corruptions_dir: Optional[str] = None  # CIFAR-10-C / CIFAR-100-C folder, for corruptions=official
    readouts: list[str] = field(default_factory=list)  # report read-outs beyond the method's own
    checkpoint: Literal["best", "last"] = "best"
    after_train: bool = True  # `advrep train` evaluates the chosen checkpoint at the end


@dataclass
class Config:
    name: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    threat: ThreatConfig = field(default_factory=ThreatConfig)
    method: dict = field(default_factory=lambda: {"name": "pgd-at"})
    terms: dict = field(default_factory=dict)  # add-on term settings of a `base+term` method
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- coercion

_FRACTION = re.compile(r"^\s*([-+]?[\d.eE+-]+)\s*/\s*([\d.eE+-]+)\s*$")


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp, key: str) -> Any:
    """Convert a YAML or command-line value to the annotated type, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is Literal:
        if isinstance(value, bool) and ("on" if value else "off") in args:
            return "on" if value else "off"  # YAML 1.1 reads on/off (and yes/no) as booleans
        if value in args:
            return value
        raise ConfigError(f"bad value {value!r} for '{key}'{suggest(value, map(str, args))}; "
                          f"valid values: {', '.join(map(str, args))}")
    if origin is list or tp is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = args[0] if args else Any
        return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for '{key}': expected a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            m = _FRACTION.match(value)
            try:
                return float(m.group(1)) / float(m.group(2)) if m else float(value)
            except (ValueError, ZeroDivisionError):
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"bad value {value!r} for '{key}': expected {_type_name(tp)}")


def build(cls, values: dict, where: str, defaults=None):
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and bad values.

    ``defaults`` (an instance) supplies the fields not in ``values``.
    """
    if not isinstance(values, dict):
        raise ConfigError(f"'{where}' must be a mapping of keys to values, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in hints:
            raise ConfigError(f"unknown config key '{_join(where, key)}'{suggest(key, names)}; "
                              f"valid keys{' in ' + repr(where) if where else ''}: {', '.join(names)}")
    kwargs = {}
    for f in fields(cls):
        if f.name in values:
            kwargs[f.name] = coerce(values[f.name], hints[f.name], _join(where, f.name))
        elif defaults is not None:
            kwargs[f.name] = getattr(defaults, f.name)
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# ------------------------------------------------------------------ loading and overrides

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "threat": ThreatConfig,
             "train": TrainConfig, "eval": EvalConfig}


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=0.1`` -> (["train", "lr"], 0.1); values are read as YAML scalars."""
    text = text[2:] if text.startswith("--") else text
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like --section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def merge(base: dict, updates: dict) -> dict:
    out = dict(base)
    for k, v in updates.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def set_path(tree: dict, path: list[str], value: Any) -> None:
    if path == ["method"] and isinstance(value, str):
        path = ["method", "name"]  # --method=trades is shorthand for --method.name=trades
    if isinstance(tree.get("method"), str):
        tree["method"] = {"name": tree["method"]}
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML recipe (see configs/)")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not {type(tree).__name__}")
    return tree


def from_dict(tree: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested mapping."""
    from . import methods, readouts  # late imports: both import this module

    base = Config()
    tree = dict(tree)
    sections = {}
    for name, cls in _SECTIONS.items():
        sections[name] = build(cls, tree.pop(name, {}) or {}, name, defaults=getattr(base, name))
    method = tree.pop("method", None) or {}
    if isinstance(method, str):
        method = {"name": method}
    if not isinstance(method, dict):
        raise ConfigError(f"'method' must be a method name or a mapping, got {method!r}")
    for name in (*sections["train"].readouts, *sections["eval"].readouts):
        readouts.READOUTS.get(name)
    method, terms = methods.validate_section({**base.method, **method}, tree.pop("terms", None) or {})
    methods.create(method["name"], terms=terms, **{k: v for k, v in method.items() if k != "name"}
                   ).check_model(sections["model"])  # a head the method needs: fail at start-up
    top = build(Config, tree, "")
    return dataclasses.replace(top, method=method, terms=terms, **sections)


def load(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults <- ``base`` mapping <- YAML file <- overrides, validated."""
    tree = dict(base or {})
    if path is not None:
        tree = merge(tree, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        set_path(tree, keys, value)
    return from_dict(tree)


def save(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------ dataset-dependent autos


def run_name(cfg: Config) -> str:
    """``name``, or ``<method>-<dataset>-<arch>`` when none is set."""
    return cfg.name or "-".join([cfg.method["name"], cfg.data.dataset, cfg.model.arch])


def resolve(cfg: Config, info) -> Config:
    """Fill the "auto" (None) fields from the dataset's :class:`~advrep.data.DatasetInfo`."""
    fam = FAMILY_THREAT[info.family]
    threat = cfg.threat
    if threat.norm == "L2" and None in (threat.eps, threat.step_size):
        raise ConfigError("threat.norm=L2 has no dataset default; set threat.eps and threat.step_size "
                          "(RobustBench's CIFAR-10 L2 setting is eps 0.5)")
    threat = dataclasses.replace(
        threat,
        eps=fam["eps"] if threat.eps is None else threat.eps,
        step_size=fam["step_size"] if threat.step_size is None else threat.step_size,
        steps=fam["steps"] if threat.steps is None else threat.steps,
    )
    if cfg.eval.pgd_step_size is not None:
        eval_step = cfg.eval.pgd_step_size
    elif threat.norm == "Linf":  # the family's step, scaled with a non-default eps
        eval_step = fam["eval_step_size"] * threat.eps / fam["eps"]
    else:
        eval_step = threat.eps / 4
    ev = dataclasses.replace(
        cfg.eval,
        pgd_steps=fam["eval_steps"] if cfg.eval.pgd_steps is None else cfg.eval.pgd_steps,
        pgd_step_size=eval_step,
    )
    data = dataclasses.replace(cfg.data, augment=cfg.data.augment or info.augment)
    from . import methods

    model = dataclasses.replace(cfg.model, normalization=cfg.model.normalization
                                or ("dataset" if info.family == "cifar" else "none"),
                                head=cfg.model.head or methods.head_of(cfg.method["name"]) or "linear")
    train = dataclasses.replace(
        cfg.train, val_steps=threat.steps if cfg.train.val_steps is None else cfg.train.val_steps)
    return dataclasses.replace(cfg, name=run_name(cfg), threat=threat, eval=ev, data=data, model=model, train=train)
