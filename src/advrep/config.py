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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml

from . import fileops, methods, readouts
from .attacks import ATTACKS
from .coercion import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, build, positive
from .errors import ConfigError
from .threat import parse_threat

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
    val_size: NonNegativeInt = 1000  # held-out training images for best-checkpoint selection (0: best = last)
    split_seed: int = 0  # fixes which training images form the validation slice
    augment: Optional[Literal["none", "crop", "flip", "crop-flip"]] = None  # auto: dataset's default
    train_subset: Optional[PositiveInt] = None  # train on the first N remaining images (quick runs)


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
    ra_weight: NonNegativeFloat = 2.0


@dataclass
class ThreatConfig:
    norm: Literal["Linf", "L2", "L1"] = "Linf"
    # auto: Linf 8/255 (CIFAR-like), 0.3 (MNIST-like); L1 12 for 32×32 colour images (RobustBench's
    # CIFAR-10 L1); L2, and L1 elsewhere, have no default. eps is in pixel units of [0, 1] images
    eps: Optional[Annotated[float, positive("the attack's radius in pixel units of [0, 1] images")]] = None
    step_size: Optional[PositiveFloat] = None  # auto: Linf 2/255, 0.01; L1 eps/4
    steps: Optional[PositiveInt] = None  # auto: 10, 40


@dataclass
class TrainConfig:
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.1
    momentum: Annotated[float, Range(0, 1, hi_open=True)] = 0.9
    nesterov: bool = False
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["piecewise", "cosine", "cyclic", "constant"] = "piecewise"
    milestones: list[PositiveFloat] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training (<= 1) or epochs; each acts at the step it falls on
    gamma: PositiveFloat = 0.1
    peak_epoch: Annotated[float, Range(0, 1, lo_open=True, hi_open=True)] = 0.4  # cyclic: fraction of training at the peak
    eps_warmup_epochs: NonNegativeFloat = 0.0  # ramp the training eps linearly from 0 over these epochs
    val_every: PositiveInt = 1
    val_steps: Optional[PositiveInt] = None  # PGD steps on the validation slice; auto: threat.steps
    stop_after: Optional[PositiveInt] = None  # end this invocation after N epochs (resume later)
    readouts: list[str] = field(default_factory=list)  # per-epoch read-outs beyond the method's own
    # auto: what is fastest on the device (factory.fast_path): bf16 autocast where native (CUDA,
    # CPUs with AVX512-BF16 or AMX), channels_last on CUDA and oneDNN CPUs; validation and
    # evaluation run in fp32 either way
    amp: Literal["auto", "bf16", "off"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    # torch.compile the model's forward once per run (a torch.compile mode; reduce-overhead adds CUDA graphs)
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    # exponential moving average of the weights (advrep.ema), e.g. 0.999; 0 = off. When on, the EMA
    # network is what validation, best-checkpoint selection and the evaluation use.
    ema: Annotated[float, Range(0, 1, hi_open=True)] = 0.0
    ema_warmup: bool = False  # decay min(ema, (1 + t)/(10 + t)) at optimizer step t
    # adversarial weight perturbation (advrep.awp), AWP's gamma; 0 = off. The authors use 1e-2 for
    # PGD-AT (no warm-up) and 5e-3 after 10 epochs for TRADES.
    awp_gamma: NonNegativeFloat = 0.0
    awp_warmup: NonNegativeInt = 0  # epochs of training before AWP starts
    log: Literal["none", "tensorboard", "wandb"] = "none"  # an extra sink for each epoch's metrics (advrep.sinks)


@dataclass
class EvalConfig:
    n: Optional[PositiveInt] = None  # evaluate the first n test images; None = all
    batch_size: PositiveInt = 500
    # fgsm, pgd, cw (CW-margin PGD), mt (multi-targeted PGD), square (black-box), autoattack,
    # ra-soft (adaptive PGD through reverse attention's selection; added for RA models when pgd runs)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd", "cw"])
    pgd_steps: Optional[PositiveInt] = None  # auto: 20 (CIFAR-like), 40 (MNIST-like)
    pgd_step_size: Optional[PositiveFloat] = None  # auto: 2/255, 0.01
    pgd_restarts: PositiveInt = 1
    cw_steps: PositiveInt = 30
    aa_version: Literal["standard", "plus", "rand", "custom"] = "standard"
    aa_attacks: list[str] = field(default_factory=list)  # for aa_version=custom: apgd-ce, apgd-t, ...
    square_queries: PositiveInt = 1000
    eps_sweep: list[PositiveFloat] = field(default_factory=list)  # PGD accuracy at each of these eps
    # more threat models in the same report, each with every attack and its worst case, plus the
    # per-sample union (robust to all): NORM or NORM:EPS, e.g. [L2:0.5, L1:12]; no EPS: the default
    threats: list[str] = field(default_factory=list)
    checks: bool = True  # the gradient-masking checks (advrep.checks)
    checks_n: PositiveInt = 200  # on the first checks_n evaluated images
    surrogate: Optional[str] = None  # standard-trained run/checkpoint for the transfer check; None: train one
    corruptions: Literal["none", "generated", "official"] = "generated"
    corruptions_dir: Optional[str] = None  # CIFAR-10-C / CIFAR-100-C folder, for corruptions=official
    readouts: list[str] = field(default_factory=list)  # report read-outs beyond the method's own
    checkpoint: Literal["best", "last"] = "best"
    weights: Optional[Literal["raw", "ema"]] = None  # auto: the EMA weights when the checkpoint has them
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
        value = load_yaml_text(raw, f"--{key}") if raw != "" else None
    except ConfigError:
        value = raw  # not YAML: the text itself (coercion then says what the key expects)
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
    node, where = tree, []
    for part in path[:-1]:
        where.append(part)
        if part not in node:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(f"'{'.'.join(where)}' is {node[part]!r}, not a section, so "
                              f"--{'.'.join(path)} cannot be set; make '{'.'.join(where)}' a mapping")
        node = node[part]
    node[path[-1]] = value


class _StrictLoader(yaml.SafeLoader):
    """YAML as configs need it: no duplicate keys (a second ``data:`` section would silently
    replace the first) and no aliases (``&a``/``*a``, which can expand exponentially)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"YAML aliases (*name) are not allowed in advrep configs (line {mark.line + 1}); "
                              "write the values out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                                  "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str, where: str):
    """Parse ``text`` with the strict loader (``where`` names it in errors)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML recipe (see configs/)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({e})") from None
    tree = load_yaml_text(text, str(path)) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not {type(tree).__name__}")
    return tree


def from_dict(tree: dict) -> Config:
    """Build and validate a Config from a (possibly partial) nested mapping."""
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
    built = create_method(method, terms)
    model = sections["model"]
    built.check_model(model)  # a head, head option or RA the method cannot take: fail at start-up
    sections["model"] = dataclasses.replace(model, head_args={**built.head_args(), **model.head_args})
    if sections["train"].awp_gamma > 0 and not built.adversarial:
        raise ConfigError(f"train.awp_gamma perturbs the weights against the adversarial batch, and method "
                          f"'{built.name}' trains on clean images only; set --train.awp_gamma=0 or choose an "
                          "adversarial method (pgd-at, trades, ...)")
    top = build(Config, tree, "")
    return validate(dataclasses.replace(top, method=method, terms=terms, **sections))


def validate(cfg: Config) -> Config:
    """The checks across fields, over a config whose values each passed their own (type and
    range): a Linf radius fits the [0, 1] pixel range, and every evaluation attack is known and
    can attack with its settings. Fields still "auto" are checked once :func:`resolve` fills
    them. Returns ``cfg``; raises one ConfigError naming the key."""
    t = cfg.threat
    if t.norm == "Linf":
        for key, eps in [("threat.eps", t.eps), *((f"eval.eps_sweep[{i}]", e) for i, e in enumerate(cfg.eval.eps_sweep))]:
            if eps is not None and eps > 1:
                raise ConfigError(f"bad value {eps!r} for '{key}': a Linf radius is in pixel units of [0, 1] "
                                  "images, at most 1 (write 8/255, not 8)")
    for name in cfg.eval.attacks:
        ATTACKS.get(name).check(t, cfg.eval)  # a misspelt or unusable attack fails now, not after training
    for text in cfg.eval.threats:
        parse_threat(text)
    return cfg


def create_method(method: dict, terms: dict) -> methods.Method:
    """The method a config's ``method`` and ``terms`` sections describe."""
    return methods.create(method["name"], terms=terms, **{k: v for k, v in method.items() if k != "name"})


def load(path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults <- ``base`` mapping <- YAML file <- overrides, validated."""
    tree = dict(base or {})
    if path is not None:
        tree = merge(tree, read_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        set_path(tree, keys, value)
    return from_dict(tree)


def save(cfg: Config, path: str | Path, header: str = "") -> None:
    """Write ``cfg`` as YAML (atomically), after the comment line ``header`` if one is given."""
    fileops.write_text(Path(path), (f"# {header}\n" if header else "") + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


# ------------------------------------------------------------------ dataset-dependent autos


def run_name(cfg: Config) -> str:
    """``name``, or ``<method>-<dataset>-<arch>`` when none is set."""
    return cfg.name or "-".join([cfg.method["name"], cfg.data.dataset, cfg.model.arch])


def _absolute(path: str | None) -> str | None:
    """Paths are stored absolute, so ``--resume`` and ``advrep eval`` work from any folder."""
    return None if path is None else str(Path(path).expanduser().resolve())


# RobustBench's L1 radius for CIFAR-10 (Croce & Hein, ICML 2021), for images of its shape only:
# an L1 radius grows with the number of pixels, so other shapes have no default.
L1_EPS_CIFAR = 12.0


def default_eps(norm: str, info) -> float:
    """The dataset's default radius of ``norm`` (ConfigError where there is none)."""
    if norm == "Linf":
        return FAMILY_THREAT[info.family]["eps"]
    if norm == "L1" and (info.channels, info.image_size) == (3, 32):
        return L1_EPS_CIFAR
    if norm == "L1":
        raise ConfigError(f"threat.norm=L1 has a default eps only for 32×32 colour images (12, RobustBench's "
                          f"CIFAR-10 L1); set threat.eps for {info.name} ({info.channels}×{info.image_size}×"
                          f"{info.image_size}; Tramèr & Boneh use 10 on MNIST)")
    raise ConfigError("threat.norm=L2 has no dataset default; set threat.eps and threat.step_size "
                      "(RobustBench's CIFAR-10 L2 setting is eps 0.5)")


def check_radius(norm: str, eps: float, info) -> None:
    """An L1 radius larger than the image's L1 diameter (every pixel from 0 to 1) is a mistake."""
    size = info.channels * info.image_size ** 2
    if norm == "L1" and eps > size:
        raise ConfigError(f"an L1 eps of {eps:g} exceeds the L1 diameter of {info.name}'s images ({size}: every "
                          "pixel moved from 0 to 1); RobustBench's CIFAR-10 value is 12")


def eval_step_size(norm: str, eps: float, info) -> float:
    """The evaluation's PGD step at ``eps``: Linf the family's, scaled with eps; L2 and L1 eps/4."""
    fam = FAMILY_THREAT[info.family]
    return fam["eval_step_size"] * eps / fam["eps"] if norm == "Linf" else eps / 4


def resolve(cfg: Config, info) -> Config:
    """Fill the "auto" (None) fields from the dataset's :class:`~advrep.data.DatasetInfo`, and
    make the paths absolute."""
    fam = FAMILY_THREAT[info.family]
    threat = cfg.threat
    eps = default_eps(threat.norm, info) if threat.eps is None else threat.eps
    if threat.norm == "L2" and threat.step_size is None:
        raise ConfigError("threat.norm=L2 has no dataset default; set threat.eps and threat.step_size "
                          "(RobustBench's CIFAR-10 L2 setting is eps 0.5)")
    check_radius(threat.norm, eps, info)
    threat = dataclasses.replace(
        threat, eps=eps,
        step_size=threat.step_size if threat.step_size is not None else
        fam["step_size"] if threat.norm == "Linf" else eps / 4,
        steps=fam["steps"] if threat.steps is None else threat.steps,
    )
    eval_step = cfg.eval.pgd_step_size if cfg.eval.pgd_step_size is not None else eval_step_size(threat.norm,
                                                                                                 threat.eps, info)
    for eps_swept in cfg.eval.eps_sweep:
        check_radius(threat.norm, eps_swept, info)
    threats = []
    for text in cfg.eval.threats:  # each with its eps: the report says what ran
        norm, eps_t = parse_threat(text)
        eps_t = default_eps(norm, info) if eps_t is None else eps_t
        check_radius(norm, eps_t, info)
        threats.append(f"{norm}:{eps_t!r}")
    ev = dataclasses.replace(
        cfg.eval,
        pgd_steps=fam["eval_steps"] if cfg.eval.pgd_steps is None else cfg.eval.pgd_steps,
        pgd_step_size=eval_step,
        threats=threats,
    )
    data = dataclasses.replace(cfg.data, augment=cfg.data.augment or info.augment, data_dir=_absolute(cfg.data.data_dir))
    ev = dataclasses.replace(ev, corruptions_dir=_absolute(ev.corruptions_dir), surrogate=_absolute(ev.surrogate))
    model = dataclasses.replace(cfg.model, normalization=cfg.model.normalization
                                or ("dataset" if info.family == "cifar" else "none"),
                                head=cfg.model.head or methods.head_of(cfg.method["name"]) or "linear")
    train = dataclasses.replace(
        cfg.train, val_steps=threat.steps if cfg.train.val_steps is None else cfg.train.val_steps)
    return validate(dataclasses.replace(cfg, name=run_name(cfg), threat=threat, eval=ev, data=data, model=model,
                                        train=train))
