"""``advrep`` subcommands. Nothing else in advrep parses arguments.

    advrep train [--config RECIPE] [--data-dir DIR] [--out RUN_DIR] [--section.key=value ...]
    advrep train --resume RUN_DIR [--section.key=value ...]
    advrep eval RUN_DIR|CHECKPOINT [--n N] [--checkpoint best|last] [--section.key=value ...]
    advrep eval --weights FILE --arch NAME --dataset NAME [--normalization none|dataset|NAME]
    advrep list [datasets|models|heads|methods]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import __version__, checkpoint
from . import config as config_mod
from .errors import AdvrepError, CheckpointError, ConfigError


def _overrides(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """``--key=value`` tokens argparse did not know, plus the convenience flags."""
    for token in extra:
        if not (token.startswith("--") and "=" in token):
            raise ConfigError(f"unrecognized argument '{token}'; overrides look like --train.lr=0.05")
    out = list(extra)
    for flag, key in (("data_dir", "data.data_dir"), ("dataset", "data.dataset"), ("device", "device"),
                      ("n", "eval.n"), ("checkpoint", "eval.checkpoint")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"--{key}={value}")
    return out


def _free_run_dir(cfg: config_mod.Config) -> Path:
    """``out_dir/<run name>``, with ``-2``, ``-3``, ... appended while that is taken."""
    base = Path(cfg.out_dir) / config_mod.run_name(cfg)
    path, k = base, 1
    while (path / "last.json").exists() or (path / "config.yaml").exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


# ----------------------------------------------------------------------------- train


def cmd_train(args, extra) -> int:
    from .train import Trainer

    overrides = _overrides(args, extra)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"{run_dir} is not an advrep run directory (no config.yaml)")
        cfg = config_mod.load(run_dir / "config.yaml", overrides)
        if not (run_dir / "last.json").is_file():
            raise CheckpointError(f"{run_dir} has no last checkpoint to resume from; start it again")
    else:
        cfg = config_mod.load(args.config, overrides)
        if args.out:
            run_dir = Path(args.out)
        else:
            run_dir = _free_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    print(f"run directory: {run_dir}")
    print(f"training {trainer.cfg.model.arch} on {trainer.splits.info.name} ({len(trainer.loader.x)} images, "
          f"{len(trainer.x_val)} held out) with {trainer.method!r} on {trainer.device}")
    try:
        summary = trainer.fit()
    except KeyboardInterrupt:
        print(f"interrupted; the last finished epoch is saved. Continue with: advrep train --resume {run_dir}",
              file=sys.stderr)
        return 130
    best = summary["best_val_robust"]
    status = "finished" if summary["finished"] else \
        f"stopped after {summary['epochs_run']} epochs (continue with: advrep train --resume {run_dir})"
    print(f"{status}: {summary['epochs_run']} epochs in {summary['time_s']:.0f}s; best validation robust "
          f"accuracy {100 * best:.2f}%; run directory {run_dir}")
    if summary["finished"] and trainer.cfg.eval.after_train:
        report = evaluate_checkpoint(run_dir / trainer.cfg.eval.checkpoint, trainer.cfg, trainer.splits,
                                     trainer.device, run_dir, progress=not args.quiet)
        _print_report(report, run_dir)
    return 0


# ----------------------------------------------------------------------------- eval


def evaluate_checkpoint(ckpt: Path, cfg, splits, device, out_dir: Path, progress: bool = True,
                        model=None, meta: dict | None = None) -> dict:
    from .evaluate import evaluate, write_report
    from .factory import model_from_checkpoint
    from .methods import readouts_of

    if model is None:
        model, meta = model_from_checkpoint(ckpt, device)
    cfg = config_mod.resolve(cfg, splits.info)
    context = {"architecture": meta["arch"], "dataset": splits.info.name, "method": meta.get("method"),
               "checkpoint": str(ckpt), "epoch": meta.get("epoch")}
    names = [*(readouts_of(meta["method"]) if meta.get("method") else ()), *cfg.eval.readouts]
    report = evaluate(model, splits.x_test, splits.y_test, threat=cfg.threat, ev=cfg.eval, device=device,
                      progress=progress, context=context, readout_names=list(dict.fromkeys(names)))
    write_report(out_dir, report)
    return report


def _print_report(report: dict, out_dir: Path) -> None:
    from .evaluate import format_table

    print(format_table(report))
    print(f"clean {100 * report['clean_acc']:.2f}%, robust (worst case over the attacks) "
          f"{100 * report['robust_acc']:.2f}%; report in {out_dir / 'report.json'}")


def cmd_eval(args, extra) -> int:
    from .factory import load_data, resolve_device

    overrides = _overrides(args, extra)
    if args.weights:
        return _eval_foreign(args, overrides)
    if args.target is None:
        raise ConfigError("advrep eval needs a run directory or checkpoint (or --weights with --arch)")
    target = Path(args.target)
    if target.is_dir():
        if not (target / "config.yaml").is_file():
            raise ConfigError(f"{target} is not an advrep run directory (no config.yaml)")
        cfg = config_mod.load(target / "config.yaml", overrides)
        ckpt = target / cfg.eval.checkpoint
        if not (target / f"{cfg.eval.checkpoint}.json").is_file():
            raise CheckpointError(f"{target} has no '{cfg.eval.checkpoint}' checkpoint yet; "
                                  "try --checkpoint last")
        out_dir = Path(args.out) if args.out else target
    else:
        meta = checkpoint.read_meta(target)
        cfg = config_mod.load(None, overrides, base=meta["config"])
        ckpt, out_dir = checkpoint.stem(target), Path(args.out) if args.out else checkpoint.stem(target).parent
    device = resolve_device(cfg.device)
    splits = load_data(cfg.data, progress=not args.quiet)
    report = evaluate_checkpoint(ckpt, cfg, splits, device, out_dir, progress=not args.quiet)
    _print_report(report, out_dir)
    return 0


def _eval_foreign(args, overrides) -> int:
    """A state dict of a supported architecture from elsewhere: safetensors, or a .pt/.pth
    loaded with ``weights_only=True`` (never unpickling code)."""
    from . import data, models
    from .factory import load_data, normalization, resolve_device

    if not args.arch or not args.dataset:
        raise ConfigError("--weights needs --arch and --dataset (and --normalization if the model "
                          "expects normalized inputs)")
    cfg = config_mod.load(None, overrides + [f"--model.arch={args.arch}",
                                             f"--model.normalization={args.normalization}"])
    device = resolve_device(cfg.device)
    # check the weights before the (slower) data load where the dataset's facts are known
    splits = None if cfg.data.dataset != "npz" else load_data(cfg.data, progress=not args.quiet)
    info = splits.info if splits else data.info(cfg.data.dataset)
    state = _read_state_dict(Path(args.weights))
    model = models.create(args.arch, num_classes=info.num_classes, in_channels=info.channels,
                          image_size=info.image_size, normalization=normalization(args.normalization, info))
    checkpoint.load_state_checked(model, state, args.weights, args.arch)
    model = model.to(device).eval()
    splits = splits or load_data(cfg.data, progress=not args.quiet)
    out_dir = Path(args.out) if args.out else Path(args.weights).parent
    report = evaluate_checkpoint(Path(args.weights), cfg, splits, device, out_dir, not args.quiet,
                                 model=model, meta={"arch": args.arch})
    _print_report(report, out_dir)
    return 0


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise many types for unreadable or unsafe files
        raise CheckpointError(f"cannot load {path} as a state dict ({str(e).splitlines()[0]})") from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers of published files
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


# ----------------------------------------------------------------------------- list


def cmd_list(args, extra) -> int:
    from . import data, methods, models

    what = args.what or "all"
    if args.markdown:
        if what != "methods":
            raise ConfigError("--markdown is available for `advrep list methods`")
        from .docs import methods_markdown

        print(methods_markdown(), end="")
        return 0
    tables = {"datasets": data.DATASETS.names(), "models": models.MODELS.names(),
              "heads": models.HEADS.names(), "methods": methods.METHODS.names(),
              "terms": methods.TERMS.names()}
    for name, items in tables.items():
        if what in ("all", name):
            print(f"{name}: {', '.join(items)}")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="advrep", description="Adversarial training that shapes the feature space.",
        epilog="Any config value can be overridden with --section.key=value, e.g. --train.epochs=10.")
    parser.add_argument("--version", action="version", version=f"advrep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--data-dir", help="local dataset copy (official or npz layout)")
        p.add_argument("--dataset", help="dataset name (see `advrep list datasets`)")
        p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
        p.add_argument("--out", help="output directory (train: the run directory)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("train", help="train a model; writes a run directory")
    p.add_argument("--config", help="YAML recipe (see configs/)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="robustness report of a run or checkpoint")
    p.add_argument("target", nargs="?", help="run directory or <tag>.safetensors")
    p.add_argument("--checkpoint", choices=["best", "last"], help="which checkpoint of a run (default best)")
    p.add_argument("--n", type=int, help="evaluate the first N test images")
    p.add_argument("--weights", help="a foreign .pt/.pth state dict (loaded with weights_only=True)")
    p.add_argument("--arch", help="architecture of --weights")
    p.add_argument("--normalization", default="none", help="for --weights: none, dataset or a dataset name")
    common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("list", help="registered datasets, models, heads, methods and add-on terms")
    p.add_argument("what", nargs="?", choices=["datasets", "models", "heads", "methods", "terms"])
    p.add_argument("--markdown", action="store_true", help="methods: the docs/methods.md table")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        return args.func(args, extra)
    except AdvrepError as e:
        print(f"advrep: error: {e}", file=sys.stderr)
        return 2
