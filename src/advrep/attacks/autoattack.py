"""The AutoAttack bridge (Croce & Hein, ICML 2020): the official code, never a re-implementation.

The official ``autoattack`` package (github.com/fra31/auto-attack) is used when it is
installed; otherwise ``pyautoattack`` (PyPI, the same code packaged). Which one ran, and its
version, is returned with the result and written into the report.

Versions ``standard``, ``plus``, ``rand``, or ``custom`` with a list of its attacks
(``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square``); norms Linf, L2 and L1.
With L1 the official ``standard`` version is l1-AutoAttack (Croce & Hein, ICML 2021): APGD-CE
with 5 restarts and APGD-T with 5 target classes, both with the large-radius option
(``use_largereps``), then what the code lists after them (the report names every attack that ran).
``custom`` with L1 runs the listed attacks without the large-radius option.
The images are attacked in chunks with a per-chunk result file under ``state_dir``, so an
interrupted evaluation resumes where it stopped (pyautoattack also resumes inside a chunk
from its own state file).

Evaluation attack ``autoattack``: ``eval.aa_version`` (``eval.aa_attacks`` for ``custom``) at
the evaluation's eps and norm, chunks of ``eval.batch_size`` images kept under the run's
``autoattack/`` folder.

Example::

    mask, info = autoattack(model, x, y, eps=8/255, norm="Linf", device="cuda")
    print(info["backend"], mask.float().mean())
    advrep eval RUN --eval.attacks=[pgd,autoattack] --eval.aa_version=plus
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..errors import ConfigError
from ..threat import NORMS
from .registry import Attack, register_attack

VERSIONS = ("standard", "plus", "rand", "custom")
AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def backend() -> tuple[str, str, type]:
    """``(module name, version, AutoAttack class)``: official ``autoattack`` first."""
    for name in ("autoattack", "pyautoattack"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return name, str(getattr(module, "__version__", "unknown")), module.AutoAttack
    raise ConfigError("AutoAttack needs the pyautoattack package: pip install pyautoattack")


def _check(version: str, attacks: list[str], norm: str) -> None:
    if version not in VERSIONS:
        raise ConfigError(f"unknown AutoAttack version '{version}'; use one of: {', '.join(VERSIONS)}")
    if version == "custom":
        bad = [a for a in attacks if a not in AA_ATTACKS]
        if not attacks or bad:
            raise ConfigError(f"AutoAttack version custom needs eval.aa_attacks from: {', '.join(AA_ATTACKS)}"
                              + (f" (unknown: {', '.join(bad)})" if bad else ""))
    elif attacks:
        raise ConfigError(f"eval.aa_attacks only applies to eval.aa_version=custom, not '{version}'")
    if norm not in NORMS:
        raise ConfigError(f"AutoAttack in advrep supports {', '.join(NORMS)}, not '{norm}'")


def _make(cls, module: str, model, *, eps, norm, version, attacks, device, seed):
    if module == "pyautoattack":
        return cls(model, eps=eps, norm=norm, version=version, attacks=attacks if version == "custom" else None,
                   device=device, seed=seed)
    adversary = cls(model, norm=norm, eps=eps, version=version, device=device, verbose=False, seed=seed,
                    **({"attacks_to_run": attacks} if version == "custom" else {}))
    return adversary


def _run_chunk(adversary, module: str, model, x, y, batch_size: int, state: Optional[Path]) -> torch.Tensor:
    """Per-sample robustness (correct clean and under every attack) of one chunk, on the CPU."""
    if module == "pyautoattack":
        # pyautoattack 0.2.0 cannot read back its own state of a chunk stopped part-way (it saves the
        # set of attacks as text and compares that text with a set: always "a different set of
        # attacks"), so such a chunk starts again; finished chunks are resumed above
        if state is not None and state.is_file():
            state.unlink()
        adversary.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state)
        flags = json.loads(state.read_text())["_robust_flags"]
        return torch.tensor(flags, dtype=torch.bool)
    x_adv = adversary.run_standard_evaluation(x, y, bs=batch_size)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
        return (clean & (model(x_adv).argmax(1) == y)).cpu()


def _digest(tensors) -> str:
    """SHA-1 of the tensors' dtypes, shapes and values, in order (anything else, such as a
    module's extra state, by its repr)."""
    h = hashlib.sha1()
    for t in tensors:
        if not torch.is_tensor(t):
            h.update(repr(t).encode())
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def autoattack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
               version: str = "standard", attacks: list[str] | None = None, device="cpu",
               batch_size: int = 250, state_dir: Path | None = None, seed: int = 0,
               progress: bool = True, fingerprint: str = "") -> tuple[torch.Tensor, dict]:
    """Robust-accuracy mask (bool, CPU) of float images ``x`` in [0, 1] and info about the run.

    ``state_dir`` keeps the per-chunk results for resuming (a temporary folder when None). They
    are keyed by digests of the model's weights and buffers and of the images and labels, by eps,
    norm, version, attacks, seed, backend and ``batch_size`` (the chunk size), and by
    ``fingerprint`` (anything else the caller wants to separate): results made for another model
    or data are discarded instead of reused, even at the same path, and a result is reused
    whatever advrep commit is running.
    """
    attacks = list(attacks or [])
    _check(version, attacks, norm)
    module, module_version, cls = backend()
    logging.getLogger("auto-attack").setLevel(logging.WARNING)  # keep its warnings, drop its debug lines
    if state_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return autoattack(model, x, y, eps=eps, norm=norm, version=version, attacks=attacks, device=device,
                              batch_size=batch_size, state_dir=Path(tmp), seed=seed, progress=progress,
                              fingerprint=fingerprint)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    # the chunk size is in the key: chunks saved with another batch_size cover other images; the
    # images' digest covers their number and labels
    key = hashlib.sha1(json.dumps([fingerprint, float(eps), norm, version, attacks, seed, module, int(batch_size),
                                   _digest(model.state_dict().values()), _digest([x, y])]).encode()).hexdigest()[:16]
    meta = state_dir / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("key") != key:
        for old in state_dir.glob("chunk-*"):
            old.unlink()
        meta.write_text(json.dumps({"key": key}))
    was_training = model.training
    model.eval()
    adversary = _make(cls, module, model, eps=eps, norm=norm, version=version, attacks=attacks, device=device,
                      seed=seed)
    masks, resumed = [], 0
    try:
        starts = range(0, len(x), batch_size)
        for i, start in enumerate(tqdm(starts, desc="AutoAttack", disable=None if progress else True, leave=False)):
            done = state_dir / f"chunk-{i:05d}.json"
            if done.is_file():
                masks.append(torch.tensor(json.loads(done.read_text()), dtype=torch.bool))
                resumed += 1
                continue
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            mask = _run_chunk(adversary, module, model, xb, yb, batch_size, state_dir / f"chunk-{i:05d}.state.json")
            done.write_text(json.dumps(mask.tolist()))
            masks.append(mask)
    finally:
        model.train(was_training)
    info = {"backend": module, "backend_version": module_version, "version": version,
            "attacks": list(adversary.attacks_to_run), "norm": norm, "eps": eps, "seed": seed,
            "resumed_chunks": resumed}
    return torch.cat(masks), info


@register_attack("autoattack")
class AutoAttack(Attack):
    title = "AutoAttack"
    batched = False
    whitebox = False  # it ends with the black-box Square: not a white-box reference for the checks

    def label(self, ev) -> str:
        return f"AutoAttack ({ev.aa_version})"

    def check(self, threat, ev) -> None:
        _check(ev.aa_version, list(ev.aa_attacks), threat.norm or "Linf")

    def robust(self, model, x, y, *, threat, ev, device, state_dir=None, fingerprint="", progress=True):
        return autoattack(model, x, y, eps=threat.eps, norm=threat.norm, version=ev.aa_version,
                          attacks=ev.aa_attacks, device=device, batch_size=ev.batch_size, state_dir=state_dir,
                          progress=progress, fingerprint=fingerprint)
