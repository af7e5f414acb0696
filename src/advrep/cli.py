"""``advrep`` subcommands. Nothing else in advrep parses arguments.

    advrep train [--config RECIPE] [--data-dir DIR] [--out RUN_DIR] [--section.key=value ...]
    advrep train --resume RUN_DIR [--section.key=value ...]
    advrep eval RUN_DIR|CHECKPOINT [--n N] [--checkpoint best|last] [--eval.weights=raw|ema] [--section.key=value ...]
    advrep eval --weights FILE --arch NAME --dataset NAME [--normalization none|dataset|NAME]
    advrep list [datasets|models|heads|methods|terms|attacks] [--markdown]
    advrep analyze RUN_DIR [--n N] [--checkpoint best|last] [--out DIR] [--readouts=[...]] [--embedding tsne|pca]
    advrep compare RUN_DIR... [--out DIR] [--n N]
    advrep card RUN_DIR|REPORT [--out FILE]
    advrep bench [--method M] [--arch A] [--dataset D] [--batch-size B] [--json]
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
from pathlib import Path


from . import __version__, checkpoint
from . import config as config_mod
from .errors import AdvrepError, CheckpointError, ConfigError


# What an override may set, per command: a key that changes nothing in a command is an error, not
# silence (an evaluation does not train, a resumed run cannot change what it trains).
READ_ONLY = ("data.", "eval.", "threat.", "device", "seed")
NOT_ON_RESUME = ("model.", "data.dataset", "data.val_size", "data.split_seed", "method.name", "train.ema")


def _check_applies(key: str, command: str) -> None:
    if command in ("eval", "analyze", "compare") and not key.startswith(READ_ONLY):
        raise ConfigError(f"--{key} does not apply to advrep {command}, which trains nothing; it takes "
                          f"--data.*, --eval.*, --threat.*, --device and --seed")
    if command == "resume" and (key == "method" or key.startswith(NOT_ON_RESUME)):
        raise ConfigError(f"--{key} cannot change when a run is resumed (its checkpoint was trained with the "
                          "saved value); start a new run with --out to change it")


def _overrides(args: argparse.Namespace, extra: list[str], command: str = "train") -> list[str]:
    """``--key=value`` tokens argparse did not know, plus the convenience flags; each must apply
    to ``command`` (train, resume, eval, analyze, compare)."""
    for token in extra:
        if not (token.startswith("--") and "=" in token):
            raise ConfigError(f"unrecognized argument '{token}'; overrides look like --train.lr=0.05")
        _check_applies(token[2:].split("=", 1)[0], command)
    out = list(extra)
    for flag, key in (("data_dir", "data.data_dir"), ("dataset", "data.dataset"), ("device", "device"),
                      ("n", "eval.n"), ("checkpoint", "eval.checkpoint")):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"--{key}={value}")
    return out


def _torchrun_aware(command):
    """Run ``command`` in :func:`advrep.distributed.session`: under torchrun only rank 0 prints,
    and the process group is closed at the end (nothing changes without torchrun)."""

    @functools.wraps(command)
    def run(args, extra):
        from . import distributed

        with distributed.session():
            return command(args, extra)

    return run


# ----------------------------------------------------------------------------- train


@_torchrun_aware
def cmd_train(args, extra) -> int:
    from .runs import Run, free_dir
    from .trainer import Trainer

    overrides = _overrides(args, extra, "resume" if args.resume else "train")
    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own config.yaml; drop --config (change single "
                              "values with --section.key=value)")
        run = Run.open(args.resume)
        cfg = run.config(overrides)
        if not run.has_checkpoint("last"):
            raise CheckpointError(f"{run.path} has no finished epoch to resume from; start it again")
        run_dir = run.path
    else:
        cfg = config_mod.load(args.config, overrides)
        run_dir = Path(args.out) if args.out else free_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume), progress=not args.quiet)
    try:
        return _train_and_evaluate(trainer, args)
    finally:
        if trainer.run is not None:
            trainer.run.release()


def _train_and_evaluate(trainer, args) -> int:
    from .api import evaluate_checkpoint
    from .runs import Run

    run_dir = trainer.run_dir  # under torchrun, the one rank 0 chose
    print(f"run directory: {run_dir}")
    print(f"training {trainer.cfg.model.arch} on {trainer.splits.info.name} ({len(trainer.loader.x)} images, "
          f"{len(trainer.x_val)} held out) with {trainer.method!r} on {trainer.device}")
    def saved() -> str:
        epoch = Run(run_dir).epoch()
        if epoch == 0:
            return f"no epoch had finished, nothing to keep; start again with: {args.command_line}"
        return f"epoch {epoch} is saved; continue with: advrep train --resume {run_dir}"

    args.on_interrupt = saved
    summary = trainer.fit()
    best = summary["best_val_robust"]
    status = "finished" if summary["finished"] else \
        f"stopped after {summary['epochs_run']} epochs (continue with: advrep train --resume {run_dir})"
    # without a validation split (data.val_size=0) there is no best-by-validation figure (-1 in the sidecar)
    best_text = f"best validation robust accuracy {100 * best:.2f}%" if best >= 0 else \
        "no validation split (the last epoch is the best)"
    print(f"{status}: {summary['epochs_run']} epochs in {summary['time_s']:.0f}s; {best_text}; run directory {run_dir}")
    if summary["finished"] and trainer.cfg.eval.after_train:
        args.on_interrupt = (f"training finished and is saved; the evaluation stopped (finished AutoAttack chunks "
                             f"are kept); evaluate with: advrep eval {run_dir}")
        tag = trainer.cfg.eval.checkpoint
        report = evaluate_checkpoint(Run(run_dir).checkpoint(tag), trainer.cfg, trainer.splits, trainer.device,
                                     run_dir, progress=not args.quiet, label=str(run_dir / tag), run=trainer.run)
        _print_report(report, run_dir)
    return 0


# ----------------------------------------------------------------------------- eval


def _print_report(report: dict, out_dir: Path) -> None:
    from .report import format_table

    print(format_table(report))
    robust = (f", robust (worst case over the attacks) {100 * report['robust_acc']:.2f}%"
              if "robust_acc" in report else ", no attack ran (no robust accuracy)")
    print(f"clean {100 * report['clean_acc']:.2f}%{robust}; report in {out_dir / 'report.json'}")


@_torchrun_aware
def cmd_eval(args, extra) -> int:
    from . import distributed
    from .api import evaluate_checkpoint
    from .factory import load_data, resolve_device
    from .runs import TAGS, Run, resolve_checkpoint

    overrides = _overrides(args, extra, "eval")
    if args.weights:
        return _eval_foreign(args, overrides)
    if args.target is None:
        raise ConfigError("advrep eval needs a run directory or checkpoint (or --weights with --arch)")
    target = Path(args.target)
    if target.is_dir():
        run = Run.open(target)
        cfg = run.config(overrides)
        ckpt = run.checkpoint(cfg.eval.checkpoint)
        label = str(target / cfg.eval.checkpoint)
        out_dir = Path(args.out) if args.out else target
    else:
        ckpt, run = resolve_checkpoint(target)
        meta = checkpoint.read_meta(ckpt)
        cfg = config_mod.load(None, overrides, base=meta["config"])
        stem = checkpoint.stem(target)
        label = str(stem) if stem.name in TAGS else str(ckpt)
        out_dir = Path(args.out) if args.out else (run.path if run else stem.parent)
    device = distributed.setup(resolve_device(cfg.device))
    args.on_interrupt = (f"the evaluation stopped; {out_dir} is unchanged apart from finished AutoAttack chunks, "
                         f"which the same command reuses: {args.command_line}")
    splits = load_data(cfg.data, progress=not args.quiet)
    report = evaluate_checkpoint(ckpt, cfg, splits, device, out_dir, progress=not args.quiet, label=label, run=run)
    _print_report(report, out_dir)
    return 0


def _eval_foreign(args, overrides) -> int:
    """A state dict of a supported architecture from elsewhere: safetensors, or a .pt/.pth
    loaded with ``weights_only=True`` (never unpickling code)."""
    from . import data, distributed
    from .api import evaluate_checkpoint
    from .factory import load_data, model_from_weights, resolve_device

    if not args.arch or not args.dataset:
        raise ConfigError("--weights needs --arch and --dataset (and --normalization if the model "
                          "expects normalized inputs)")
    cfg = config_mod.load(None, overrides + [f"--model.arch={args.arch}",
                                             f"--model.normalization={args.normalization}"])
    if cfg.eval.weights == "ema":
        raise CheckpointError(f"--weights {args.weights} is one state dict, with no EMA weights; drop "
                              "--eval.weights=ema")
    device = distributed.setup(resolve_device(cfg.device))
    # check the weights before the (slower) data load where the dataset's facts are known
    splits = None if cfg.data.dataset != "npz" else load_data(cfg.data, progress=not args.quiet)
    info = splits.info if splits else data.info(cfg.data.dataset)
    model = model_from_weights(Path(args.weights), args.arch, info, args.normalization).to(device)
    splits = splits or load_data(cfg.data, progress=not args.quiet)
    out_dir = Path(args.out) if args.out else Path(args.weights).parent
    report = evaluate_checkpoint(Path(args.weights), cfg, splits, device, out_dir, not args.quiet,
                                 model=model, meta={"arch": args.arch})
    _print_report(report, out_dir)
    return 0


# ----------------------------------------------------------------------------- list


def cmd_list(args, extra) -> int:
    from . import attacks, data, methods, models

    what = args.what or "all"
    if args.markdown:
        if what != "methods":
            raise ConfigError("--markdown is available for `advrep list methods`")
        from .docs import methods_markdown

        print(methods_markdown(), end="")
        return 0
    tables = {"datasets": data.DATASETS.names(), "models": models.MODELS.names(),
              "heads": models.HEADS.names(), "methods": methods.METHODS.names(),
              "terms": methods.TERMS.names(), "attacks": attacks.ATTACKS.names()}
    for name, items in tables.items():
        if what in ("all", name):
            print(f"{name}: {', '.join(items)}")
    return 0


# ----------------------------------------------------------------------------- bench


def cmd_bench(args, extra) -> int:
    import json

    from . import bench
    from .factory import fast_path, resolve_device

    if extra:
        raise ConfigError(f"unrecognized argument '{extra[0]}'; see advrep bench --help")
    device = resolve_device(args.device or "auto")
    amp, channels_last = fast_path(device, {"on": "bf16"}.get(args.amp, args.amp), args.channels_last)
    setup = bench.Setup(method=args.method, arch=args.arch, dataset=args.dataset, batch_size=args.batch_size,
                        device=device, images=args.images, amp=amp, channels_last=channels_last,
                        compile=args.compile)
    result = bench.run(setup, calls=args.calls)
    print(json.dumps(result, indent=1) if args.json else bench.format_result(result))
    return 0


# ----------------------------------------------------------------------------- analyze, compare


def cmd_analyze(args, extra) -> int:
    from .analysis import analyze_run

    names = None
    if args.readouts is not None:  # "[a,b]" or "a,b"; "[]" asks for none
        names = [t.strip() for t in args.readouts.strip().strip("[]").split(",") if t.strip()]
    result, out_dir = analyze_run(Path(args.run_dir), _overrides(args, extra, "analyze"), args.out and Path(args.out),
                                  names, args.embedding, progress=not args.quiet)
    g = result["geometry"]
    print(f"{result['n']} test images, clean {100 * result['accuracy']['clean']:.2f}%, robust (PGD) "
          f"{100 * result['accuracy']['robust']:.2f}%; Fisher-style F_min clean {g['clean']['fisher_min']:.2f}, "
          f"adversarial {g['adv']['fisher_min']:.2f}; min angle {result['angles']['min_deg']:.1f}°")
    print(f"analysis in {out_dir / 'analysis.json'} ({', '.join(result['figures'])})")
    return 0


def cmd_compare(args, extra) -> int:
    from .compare import compare

    out_dir = compare([Path(d) for d in args.run_dirs], args.out and Path(args.out), n=args.n,
                      embedding=args.embedding, overrides=_overrides(args, extra, "compare"), progress=not args.quiet)
    print((out_dir / "compare.md").read_text(encoding="utf-8").split("## Feature geometry")[0].rstrip())
    print(f"comparison in {out_dir / 'compare.md'} and {out_dir / 'compare.html'}")
    return 0


def cmd_card(args, extra) -> int:
    import json

    from .card import write_card

    if extra:
        raise ConfigError(f"unrecognized argument '{extra[0]}'; advrep card takes a run directory and --out")
    info, out = write_card(Path(args.target), args.out and Path(args.out))
    print(json.dumps(info, indent=2))
    notes = info["advrep"]["not_comparable_because"]
    print(f"model card in {out}" + (f"; not RobustBench-comparable: {'; '.join(notes)}" if notes else ""))
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

    p = sub.add_parser("bench", help="images/s of advrep's attack, train step and epoch vs the plain way")
    p.add_argument("--method", default="pgd-at")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--dataset", default="cifar10", help="sets the image shape, classes and threat model")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=2048, help="images in the timed epoch")
    p.add_argument("--calls", type=int, default=5, help="timed calls of the attack and the train step")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="bf16 autocast (auto: on CUDA)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile", choices=["off", "default", "reduce-overhead", "max-autotune"], default="off",
                   help="torch.compile advrep's model with this mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("list", help="registered datasets, models, heads, methods, add-on terms and evaluation attacks")
    p.add_argument("what", nargs="?", choices=["datasets", "models", "heads", "methods", "terms", "attacks"])
    p.add_argument("--markdown", action="store_true", help="methods: the docs/methods.md table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("analyze", help="feature-space geometry, per-stage distances and embeddings of a run")
    p.add_argument("run_dir", help="run directory")
    p.add_argument("--n", type=int, help="analyze the first N test images (default eval.n, else 1000)")
    p.add_argument("--checkpoint", choices=["best", "last"], help="which checkpoint (default best)")
    p.add_argument("--readouts", metavar="[NAME,...]", help="read-outs to add (default: the run's method's)")
    p.add_argument("--embedding", choices=["tsne", "pca"], default="tsne", help="2-D embedding (default tsne)")
    common(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("compare", help="runs side by side: compare.md and a self-contained compare.html")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--n", type=int, default=500, help="test images for what is computed here (default 500)")
    p.add_argument("--embedding", choices=["tsne", "pca"], default="tsne",
                   help="for runs not analyzed yet (default tsne)")
    common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("card", help="a RobustBench-style model_info JSON from a run's report.json")
    p.add_argument("target", help="run directory (or a report.json)")
    p.add_argument("--out", help="where to write it (default: model_info.json beside the report)")
    p.set_defaults(func=cmd_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # What Ctrl-C leaves behind, kept current by the command as it goes: one line, never a traceback.
    args.command_line = "advrep " + shlex.join(sys.argv[1:] if argv is None else argv)
    args.on_interrupt = "nothing was written"
    try:
        return args.func(args, extra)
    except AdvrepError as e:
        print(f"advrep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = args.on_interrupt() if callable(args.on_interrupt) else args.on_interrupt
        print(f"advrep: interrupted; {note}", file=sys.stderr)
        return 130
