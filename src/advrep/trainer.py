"""The training loop: optimizer, lr schedule, AMP, checkpoint and resume, best-robust selection.

Per step: ``x_adv = method.perturb(model, x, y)``, then ``method.objective`` in train mode,
backward, optimizer step. Metrics stay on the device and are read once per epoch; a
non-finite loss is detected from a device-side flag checked every ``SYNC_EVERY`` steps, so
the loop never waits on the GPU inside an epoch. At each epoch's end: validation (clean
and PGD on a held-out slice of the *training* set), a row in ``metrics.jsonl``, the ``last``
checkpoint and, when the validation robust accuracy improves, ``best``.

Two additions compose with every adversarial method: a moving average of the weights
(``train.ema``, :mod:`advrep.ema`), which then is what validation, best-checkpoint selection and
the evaluation use, and adversarial weight perturbation (``train.awp_gamma``, :mod:`advrep.awp`),
applied around each step's loss after ``train.awp_warmup`` epochs. With ``train.log`` each
epoch's row also goes to TensorBoard or W&B (:mod:`advrep.sinks`); ``metrics.jsonl`` stays the
record.

Determinism: the trainer reseeds torch from ``(seed, epoch)`` at the start of every epoch and
the loader draws its order from the same pair, so ``--resume`` from the last checkpoint ends
with the same weights as an uninterrupted run (bit-identical on the CPU).

Under ``torchrun`` (:mod:`advrep.distributed`) the model is wrapped in DistributedDataParallel
with synchronized BatchNorm, each rank trains on its slice of every global batch
(``train.batch_size`` is the global batch) and attacks it locally, the validation attack is
split over the ranks, and rank 0 alone writes the run directory while the others wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__, awp, checkpoint, distributed, readouts, sinks
from .compiling import compile_model
from . import config as config_mod
from .config import Config, TrainConfig
from .data.loader import epoch_seed
from .ema import WeightEMA
from .errors import ConfigError, TrainingError
from .factory import build_model, fast_path, load_data, normalization, resolve_device, split_validation
from .models.heads import resolved_options
from .readouts import Probe
from .runs import Run
from .threat import Threat

SYNC_EVERY = 50  # steps between host reads of the non-finite-loss flag
CUSTOM = "custom"  # the checkpoint's architecture when the network was the caller's own


def lr_at(cfg: TrainConfig, epoch: int, frac: float) -> float:
    """Learning rate at ``epoch + frac`` (``frac`` in [0, 1) within the epoch)."""
    t = epoch + frac
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "piecewise":  # milestones <= 1 are fractions of training, else epochs;
        bounds = [m * cfg.epochs if m <= 1 else m for m in cfg.milestones]  # each acts at the step
        return cfg.lr * cfg.gamma ** sum(t >= b - 1e-9 for b in bounds)  # it falls on (0.3*10 = 3+4e-16)
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * t / cfg.epochs))
    peak = cfg.peak_epoch * cfg.epochs  # cyclic: 0 -> lr at the peak -> 0 at the end
    return cfg.lr * (t / peak if t < peak else max(0.0, (cfg.epochs - t) / (cfg.epochs - peak)))


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _amp_context(dtype, device: torch.device):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def outer_step(method, model: torch.nn.Module, opt: torch.optim.Optimizer, x, x_adv, y, threat, *,
               train_model: torch.nn.Module | None = None, amp=None, awp_gamma: float = 0.0,
               awp_names: list[str] = (), projected=()) -> tuple[torch.Tensor, dict]:
    """The outer minimization of one training step: the method's loss at ``x_adv`` (through
    ``train_model``, the DDP wrapper under torchrun), backward, optimizer step; returns ``(loss,
    metrics)``. With ``awp_gamma`` (:mod:`advrep.awp`) the loss and its gradient are taken at the
    weights perturbed along ``awp_names``, and the perturbation is removed after the step (then
    the ``projected`` modules' rows are put back on their sphere)."""
    train_model = model if train_model is None else train_model
    with amp if amp is not None else contextlib.nullcontext():
        train_model.train()
        if awp_gamma:  # AWP: the proxy's ascent step gives the perturbation, which is applied
            v = awp.perturbation(model, lambda: method.objective(model, x, x_adv, y, threat)[0], awp_names,
                                 reduce=_rank_mean)
            awp.add(model, v, awp_gamma)
        loss, metrics = method.objective(train_model, x, x_adv, y, threat)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if awp_gamma:  # removed after the step, as in the authors' code
        awp.add(model, v, -awp_gamma)
        for module in projected:
            module.project_()
    return loss, metrics


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
                 log=print, model: torch.nn.Module | None = None):
        """``model``: a network of one's own (any module mapping [0, 1] images to logits; methods
        that read features need ``forward_features``) instead of the one ``cfg.model`` builds."""
        sinks.check(cfg.train.log)  # a logging package that is missing stops before anything is written
        self.run_dir = Path(run_dir)
        self.run: Run | None = None  # the run directory's writer (rank 0 only)
        self.progress = progress
        self.log = log
        self.device = distributed.setup(resolve_device(cfg.device))
        self.run_dir = Path(distributed.from_main(str(self.run_dir)))  # an automatic name is rank 0's
        self.splits = load_data(cfg.data, progress=progress)
        cfg = config_mod.resolve(cfg, self.splits.info)
        self.cfg = cfg
        self.method = config_mod.create_method(cfg.method, cfg.terms)
        self.method.check_model(cfg.model)
        self.threat = Threat.of(cfg.threat)
        torch.manual_seed(cfg.seed)
        self.custom = model is not None
        model = distributed.sync_batchnorm(build_model(cfg.model, self.splits.info) if model is None else model,
                                           self.device)
        self.model = model.to(self.device)
        bf16, self.channels_last = fast_path(self.device, cfg.train.amp, cfg.train.channels_last)
        self.amp_dtype = torch.bfloat16 if bf16 else None  # the training autocast (validation: fp32)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if cfg.train.compile != "off":
            compile_model(self.model, cfg.train.compile)
        self.optimizer = build_optimizer(cfg.train, self.model)
        self.projected = [m for m in self.model.modules() if hasattr(m, "project_")]  # rows kept on a sphere
        for module in self.projected:
            self.optimizer.register_step_post_hook(lambda *_, m=module: m.project_())
        self.ema = WeightEMA(self.model, cfg.train.ema, cfg.train.ema_warmup) if cfg.train.ema else None
        self.awp_names = awp.perturbed_names(self.model) if cfg.train.awp_gamma else []
        (x_tr, y_tr), (self.x_val, self.y_val) = split_validation(
            self.splits.x_train, self.splits.y_train, cfg.data.val_size, cfg.data.split_seed)
        if cfg.data.train_subset is not None:
            x_tr, y_tr = x_tr[:cfg.data.train_subset], y_tr[:cfg.data.train_subset]
        self.loader = distributed.ShardedLoader(x_tr, y_tr, cfg.train.batch_size, device=self.device,
                                                shuffle=True, augment=cfg.data.augment, seed=cfg.seed,
                                                channels_last=self.channels_last,
                                                full_batches=cfg.train.compile != "off")
        self.start_epoch, self.best = 0, -1.0
        if resume:
            self._resume()
        else:
            self._start()
        # the methods' passes run through DDP (gradients all-reduced); the attack uses self.model
        self.train_model = distributed.DataParallel(self.model, self.device) if distributed.world() > 1 \
            else self.model

    # ------------------------------------------------------------------ run directory

    def _start(self) -> None:
        if distributed.is_main():
            self.run = Run.create(self.run_dir, self.cfg)
        distributed.barrier()

    def _resume(self) -> None:
        if distributed.is_main():
            self.run = Run.open(self.run_dir).acquire()
            self.run.recover()  # whatever a crash left past the last commit goes
        distributed.barrier()
        stem = Run(self.run_dir).checkpoint("last")
        state, meta, opt_state = checkpoint.load(stem)
        checkpoint.load_state_checked(self.model, state, str(stem) + ".safetensors", self.cfg.model.arch)
        if meta["config"]["train"]["optimizer"] != self.cfg.train.optimizer:
            raise ConfigError(f"{self.run_dir} was trained with {meta['config']['train']['optimizer']}; its "
                              f"optimizer state cannot continue as {self.cfg.train.optimizer}")
        saved_ema = checkpoint.has_ema(meta)
        if saved_ema != (self.ema is not None):
            raise ConfigError(f"{self.run_dir} was trained {'with' if saved_ema else 'without'} train.ema; a "
                              "resumed run keeps it as it was (start a new run with --out to change it)")
        if self.ema is not None:
            self.ema.load(checkpoint.load(stem, optimizer=False, weights="ema")[0])
        self.optimizer.load_state_dict(opt_state)
        for group in self.optimizer.param_groups:  # the config's hyperparameters win over the saved ones
            group.update(self.optimizer.defaults)
        self.start_epoch, self.best = meta["epoch"], meta["best_val_robust"]
        distributed.barrier()  # every rank has read the checkpoint before rank 0 rewrites files
        if distributed.is_main():
            self.run.write_config(self.cfg)

    def _meta(self, epoch: int) -> dict:
        c = self.cfg
        return {
            "arch": CUSTOM if self.custom else c.model.arch, "head": c.model.head, "ra": c.model.ra,
            "head_args": {} if self.custom else resolved_options(self.model.head, c.model.head),  # defaults included
            "num_classes": self.splits.info.num_classes, "in_channels": self.splits.info.channels,
            "image_size": self.splits.info.image_size, "normalization": c.model.normalization,
            "normalization_values": normalization(c.model.normalization, self.splits.info),
            "dataset": self.splits.info.name, "method": c.method["name"],
            "threat": dataclasses.asdict(c.threat), "config": c.to_dict(), "epoch": epoch,
            "best_val_robust": self.best, "advrep_version": __version__, "torch_version": torch.__version__,
        }

    # ------------------------------------------------------------------ the loop

    def threat_at(self, epoch: int, frac: float) -> Threat:
        """The training threat model at ``epoch + frac``: eps (and step) ramped linearly over
        ``eps_warmup_epochs``; MNIST-scale eps from the first step can leave a fresh network
        stuck at chance."""
        warm = self.cfg.train.eps_warmup_epochs
        return self.threat.scaled(min(1.0, (epoch + frac) / warm)) if warm else self.threat

    def train_epoch(self, epoch: int) -> dict:
        cfg, model, opt = self.cfg, self.model, self.optimizer
        torch.manual_seed(epoch_seed(cfg.seed, epoch))
        self.loader.set_epoch(epoch)
        model.train()
        n = len(self.loader)
        sums: dict[str, torch.Tensor] = {}
        bad_step = torch.full((), -1, device=self.device)
        step_ids = torch.arange(n, device=self.device)  # made once: no host-to-device copy per step
        bar = tqdm(self.loader, total=n, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=None if self.progress and distributed.is_main() else True, leave=False)
        gamma = cfg.train.awp_gamma if epoch >= cfg.train.awp_warmup else 0.0
        for step, (x, y) in enumerate(bar):
            lr = lr_at(cfg.train, epoch, step / n)
            threat = self.threat_at(epoch, (step + 1) / n)
            for group in opt.param_groups:
                group["lr"] = lr
            lo = distributed.rank() * len(x)  # equal shards: this rank holds rows [lo, lo + len(x))
            with _amp_context(self.amp_dtype, self.device):
                with distributed.global_draws(lo, lo + len(x), len(x) * distributed.world()):
                    x_adv = self.method.perturb(model, x, y, threat)
            loss, metrics = outer_step(self.method, model, opt, x, x_adv, y, threat, train_model=self.train_model,
                                       amp=_amp_context(self.amp_dtype, self.device), awp_gamma=gamma,
                                       awp_names=self.awp_names, projected=self.projected)
            if self.ema is not None:
                self.ema.update(model, epoch * n + step + 1)
            finite = torch.isfinite(loss.detach())
            bad_step = torch.where((bad_step < 0) & ~finite, step_ids[step], bad_step)
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, 0) + value.float()
            if (step + 1) % SYNC_EVERY == 0 or step + 1 == n:
                first_bad = int(distributed.reduce(torch.where(bad_step < 0, n, bad_step), "min"))
                if first_bad < n:
                    raise TrainingError(
                        f"loss became NaN or infinite at epoch {epoch + 1}, step {first_bad + 1}; "
                        f"stopped, the last good checkpoint in {self.run_dir} is kept "
                        "(lower train.lr or check the data)")
        return {k: float(v) / n for k, v in distributed.mean_over_ranks(sums).items()}

    def validate(self) -> dict:
        """Clean and PGD accuracy on the held-out slice, and the read-outs, from one probe
        ({} when ``data.val_size`` is 0)."""
        if len(self.x_val) == 0:
            return {}
        if self.ema is not None:  # the EMA network is the one validated (and selected as best)
            with self.ema.swapped(self.model):
                return self._validate()
        return self._validate()

    def _validate(self) -> dict:
        c = self.cfg
        attack = dict(norm=c.threat.norm, eps=c.threat.eps, step_size=c.threat.step_size,
                      steps=c.train.val_steps)
        x_adv = None
        if distributed.world() > 1:  # each rank attacks its share; every rank's probe then sees all
            x_adv = distributed.pgd_in_shards(self.model, self.x_val.to(self.device).float().div(255),
                                              self.y_val.to(self.device), c.eval.batch_size, **attack)
        probe = Probe(self.model, self.x_val, self.y_val, device=self.device, batch_size=c.eval.batch_size,
                      x_adv=x_adv, **attack)
        acc = probe.accuracies()
        row = {"val_clean": acc["clean"], "val_robust": acc["robust"]}
        names = list(dict.fromkeys([*self.method.readouts, *c.train.readouts]))
        if names:
            row["readouts"] = readouts.run(names, probe)
        return row

    def fit(self) -> dict:
        cfg = self.cfg
        stop = cfg.train.epochs if cfg.train.stop_after is None else min(
            cfg.train.epochs, self.start_epoch + cfg.train.stop_after)
        t_start = time.time()
        # the optional TensorBoard / W&B sink, opened here so a Trainer that never fits opens none
        self.sink = sinks.open_sink(cfg.train.log, self.run_dir, cfg) if distributed.is_main() else None
        try:
            self._epochs(stop)
        finally:
            if self.sink is not None:
                self.sink.close()
        finished = stop == cfg.train.epochs
        return {"epochs_run": stop - self.start_epoch, "finished": finished,
                "time_s": round(time.time() - t_start, 1), "best_val_robust": self.best}

    def _epochs(self, stop: int) -> None:
        cfg = self.cfg
        for epoch in range(self.start_epoch, stop):
            t0 = time.time()
            n = len(self.loader)  # the lr of the epoch's first and last steps (a milestone may fall in between)
            row = {"epoch": epoch + 1, "lr": lr_at(cfg.train, epoch, 0.0),
                   "lr_end": lr_at(cfg.train, epoch, (n - 1) / max(n, 1))}
            row.update(self.train_epoch(epoch))
            row["eps"] = self.threat_at(epoch, 1.0).eps
            row["train_time_s"] = round(time.time() - t0, 2)
            if (epoch + 1) % cfg.train.val_every == 0 or epoch + 1 == cfg.train.epochs:
                row.update(self.validate())
            # without a validation slice, "best" is simply the latest epoch
            improved = row.get("val_robust", -1.0) > self.best or len(self.x_val) == 0
            if improved:
                self.best = row.get("val_robust", self.best)
            if distributed.is_main():
                self.run.append_metrics(row)
                self.run.commit(epoch + 1, self.model, self._meta(epoch + 1), self.optimizer, improved,
                                self.ema.state_dict(self.model) if self.ema is not None else None)
                if self.sink is not None:
                    self.sink.log(row)
                self.log(_epoch_line(row, cfg.train.epochs))
            distributed.barrier()  # the others go on once the epoch's checkpoint is complete


def _rank_mean(t: torch.Tensor) -> torch.Tensor:
    return distributed.reduce(t, "mean") if distributed.world() > 1 else t


def _epoch_line(row: dict, epochs: int) -> str:
    lr = f"{row['lr']:.3g}" + (f"->{row['lr_end']:.3g}" if row["lr_end"] != row["lr"] else "")
    text = f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  lr {lr}"
    if "val_clean" in row:
        text += f"  val clean {100 * row['val_clean']:.2f}%  val robust {100 * row['val_robust']:.2f}%"
    return text + f"  ({row['train_time_s']:.1f}s)"
