"""``advrep bench``: images per second of advrep's attack step, train step and epoch, next to
the same work done the plain way, measured in the same process on the same device.

The plain way is how the reference implementations run (TRADES, MART, fast_adversarial),
method by method: fp32 and NCHW; a host ``DataLoader`` with worker processes (crop and flip
per image, pinned memory and a copy to the device per batch on CUDA); the method's own attack
(the same loss, start, step count and step size, read from what ``method.perturb`` asks of
PGD, so ``fgsm-rs`` runs one step and ``+anc`` its CE attack on both sides) with gradients from
``loss.backward()``, which also fills every parameter's ``.grad``; and, for KL attacks
(TRADES), the TRADES code's loop: the clean prediction recomputed at every attack step (its
input gradient by ``autograd.grad``, as that code takes it).
advrep's way is what ``advrep train`` runs: device-resident uint8 data augmented on the
device, ``method.perturb`` (input gradients only, clean targets computed once), bf16 autocast
and channels_last where asked, and with ``compile`` the model's forward compiled by
``torch.compile`` (as ``train.compile`` does; the warm-up calls absorb the compilation). The
outer step's loss is the method's own in both (a term's inner attack, ``+anc``'s negatives,
runs advrep's way in both), so the ratio isolates how the work is done, not what is computed
(tests/test_bench.py counts both sides' passes).

Data are random images of the dataset's shape: speed does not depend on pixel values.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import data, methods, models
from .config import FAMILY_THREAT
from .data.loader import DeviceLoader, random_crop, random_flip
from .tensors import fp32
from .threat import Threat


@dataclass
class Setup:
    method: str
    arch: str
    dataset: str
    batch_size: int
    device: torch.device
    images: int  # per "epoch"
    amp: bool
    channels_last: bool
    compile: str = "off"  # a torch.compile mode for advrep's side, or off


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, images_per_call: int, device, warmup: int, calls: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    _sync(device)
    return images_per_call * calls / (time.perf_counter() - t0)


def plain_pgd(model, x, y, *, eps, step_size, steps, kl: bool = False, random_start: str | None = "auto",
              init_std: float = 0.001, loss=None):
    """The textbook Linf loop of the reference code, fp32: ``loss.backward()`` into every
    parameter, or for ``kl`` the TRADES code's loop (the clean prediction recomputed at each
    step, the input gradient by ``autograd.grad``). ``random_start``
    ``"uniform"``, ``"normal"`` or ``None`` (``"auto"``: normal with ``kl``, else uniform); ``loss`` a
    per-sample objective ``(logits, y) -> (B,)`` to maximize instead of CE."""
    start = ("normal" if kl else "uniform") if random_start == "auto" else random_start
    if start == "normal":
        x_adv = x + init_std * torch.randn_like(x)
    elif start == "uniform":
        x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    else:
        x_adv = x.clone()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        if kl:
            value = F.kl_div(F.log_softmax(model(x_adv), 1), F.softmax(model(x), 1), reduction="sum")
        elif loss is not None:
            value = loss(model(x_adv), y).sum()
        else:
            value = F.cross_entropy(model(x_adv), y)
        if kl:  # the TRADES code takes this gradient with autograd.grad
            (grad,) = torch.autograd.grad(value, [x_adv])
        else:  # MART's, Madry's and fast_adversarial's loops call backward()
            model.zero_grad()
            value.backward()
            grad = x_adv.grad
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def attack_spec(method, model, x, y, threat) -> dict | None:
    """What ``method.perturb`` asks of PGD (eps, steps, step size, start, loss), read by running
    it once with PGD replaced by a recorder; None for a method without an attack."""
    if not method.adversarial:
        return None
    calls = []

    def record(_model, x_, _y, **kwargs):
        calls.append(kwargs)
        return x_

    real = methods.base.attacks.pgd
    methods.base.attacks.pgd = record
    try:
        method.perturb(model, x, y, threat)
    finally:
        methods.base.attacks.pgd = real
    if len(calls) != 1:
        raise ValueError(f"method '{method.name}' ran {len(calls)} PGD attacks in perturb; the bench knows one")
    c = calls[0]
    loss = c.get("loss", "ce")
    if loss not in ("ce", "kl") and not callable(loss):
        raise ValueError(f"the bench's plain way has no '{loss}' attack loss")
    return {"eps": c["eps"], "step_size": c["step_size"], "steps": c["steps"], "kl": loss == "kl",
            "random_start": c.get("random_start", "uniform"), "init_std": c.get("init_std", 0.001),
            "loss": loss if callable(loss) else None}


def _host_loader(x_uint8, y, batch_size, augment: str, device: torch.device, workers: int = 2):
    """A DataLoader over CPU tensors with worker processes and per-image crop/flip, as the
    reference code's torchvision transforms run (pinned memory for CUDA)."""

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x_uint8)

        def __getitem__(self, i):
            img = x_uint8[i:i + 1]
            gen = torch.Generator().manual_seed(i)
            if "crop" in augment:
                img = random_crop(img, 4, gen)
            if "flip" in augment:
                img = random_flip(img, gen)
            return img[0].float() / 255, y[i]

    return torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       pin_memory=device.type == "cuda")


def run(s: Setup, warmup: int = 2, calls: int = 5) -> dict:
    info = data.info(s.dataset)
    fam = FAMILY_THREAT[info.family]
    threat = Threat(eps=fam["eps"], step_size=fam["step_size"], steps=fam["steps"])
    torch.manual_seed(0)
    model = models.create(s.arch, num_classes=info.num_classes, in_channels=info.channels,
                          image_size=info.image_size, head=methods.head_of(s.method) or "linear",
                          normalization=(info.mean, info.std)).to(s.device)
    method = methods.create(s.method)
    # advrep's side trains its own copy (the only one compiled), from the same weights
    fast_model = copy.deepcopy(model).to(memory_format=torch.channels_last) if s.channels_last \
        else copy.deepcopy(model)
    if s.compile != "off":
        from .compiling import compile_model

        compile_model(fast_model, s.compile)
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (model, fast_model)}
    x_all = torch.randint(0, 256, (s.images, info.channels, info.image_size, info.image_size), dtype=torch.uint8)
    y_all = torch.randint(0, info.num_classes, (s.images,))
    x = x_all[:s.batch_size].to(s.device).float() / 255
    y = y_all[:s.batch_size].to(s.device)
    amp = torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.amp)
    x_fast = x.contiguous(memory_format=torch.channels_last) if s.channels_last else x

    def fast_attack(xb=x_fast, yb=y):
        with amp:
            return method.perturb(fast_model, xb, yb, threat)

    spec = attack_spec(method, model, x, y, threat)

    def plain_attack(xb=x, yb=y):
        if spec is None:
            return xb
        with methods.base.bn_mode(model, method.cfg.attack_bn):
            return plain_pgd(model, xb, yb, **spec)

    def step(net, attack, xb, yb, autocast):
        x_adv = attack(xb, yb)
        with autocast:
            net.train()
            loss, _ = method.objective(net, xb, x_adv, yb, threat)
        opts[net].zero_grad(set_to_none=True)
        fp32(loss).backward()
        opts[net].step()

    def fast_step(xb=x_fast, yb=y):
        step(fast_model, fast_attack, xb, yb, amp)

    def plain_step(xb=x, yb=y):
        step(model, plain_attack, xb, yb, torch.autocast(s.device.type, enabled=False))

    fast_loader = DeviceLoader(x_all, y_all, s.batch_size, device=s.device, shuffle=True, augment=info.augment,
                               channels_last=s.channels_last)
    plain_loader = _host_loader(x_all, y_all, s.batch_size, info.augment, s.device)

    def fast_epoch():
        for xb, yb in fast_loader:
            fast_step(xb, yb)

    def plain_epoch():
        for xb, yb in plain_loader:
            plain_step(xb.to(s.device, non_blocking=True), yb.to(s.device, non_blocking=True))

    model.eval()
    results = {}
    for name, fast, plain, per_call, n_calls, n_warm in (
        ("attack", fast_attack, plain_attack, s.batch_size, calls, warmup),
        ("train_step", fast_step, plain_step, s.batch_size, calls, warmup),
        ("epoch", fast_epoch, plain_epoch, s.images, 1, 1),
    ):
        for net in (model, fast_model):
            net.eval() if name == "attack" else net.train()
        advrep_rate = _rate(fast, per_call, s.device, n_warm, n_calls)
        plain_rate = _rate(plain, per_call, s.device, n_warm, n_calls)
        results[name] = {"advrep_img_s": advrep_rate, "plain_img_s": plain_rate, "ratio": advrep_rate / plain_rate}
    return {"method": s.method, "arch": s.arch, "dataset": s.dataset, "batch_size": s.batch_size,
            "device": str(s.device), "device_name": _device_name(s.device), "amp_bf16": s.amp,
            "channels_last": s.channels_last, "compile": s.compile, "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "epoch_images": s.images, **results}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def format_result(r: dict) -> str:
    lines = [f"{r['method']} / {r['arch']} / {r['dataset']}, batch {r['batch_size']}, {r['device_name']} "
             f"({r['device']}), torch {r['torch']}, bf16 {'on' if r['amp_bf16'] else 'off'}, "
             f"channels_last {'on' if r['channels_last'] else 'off'}, compile {r.get('compile', 'off')}",
             f"{'':<12}{'advrep img/s':>14}{'plain img/s':>14}{'ratio':>8}"]
    for name in ("attack", "train_step", "epoch"):
        x = r[name]
        lines.append(f"{name:<12}{x['advrep_img_s']:>14.1f}{x['plain_img_s']:>14.1f}{x['ratio']:>7.2f}x")
    return "\n".join(lines)
