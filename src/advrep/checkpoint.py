"""Checkpoints: safetensors plus a JSON sidecar, written atomically, loaded without pickle.

A checkpoint ``<dir>/<tag>`` is
- ``<tag>.safetensors``: the model's state dict, exactly (loadable by any safetensors user);
- ``<tag>.optim.safetensors``: optimizer tensors (only for ``last``, which resume needs);
- ``<tag>.ema.safetensors``: with ``--train.ema``, the EMA network's state dict (the averaged
  parameters, the raw network's BatchNorm buffers; :mod:`advrep.ema`); ``<tag>.safetensors``
  stays the raw network, which resume continues; the sidecar's ``weights`` lists the sets;
- ``<tag>.json``: architecture, head, normalization, method, threat model, the resolved
  config, library and torch versions, epoch, best validation robust accuracy.

Each file is written to a temporary name, flushed and renamed into place
(:mod:`advrep.fileops`), sidecar last; every file carries the same random token (safetensors
metadata / JSON field), so a set whose files come from two different writes is detected on load
instead of mixing two epochs. A run writes each epoch's set under new names and commits it with
one pointer file (:mod:`advrep.runs`), so its sets are never replaced in place.

Random-number state is not stored: the trainer reseeds from ``(seed, epoch)`` at the start of
every epoch, so the state at an epoch boundary is derived, not saved.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import fileops
from .errors import CheckpointError

FORMAT = "advrep-checkpoint/1"
WEIGHTS = ("raw", "ema")  # the weight sets a checkpoint can hold


def _tensors(state: dict) -> dict[str, torch.Tensor]:
    """The state's tensors on the host, copied there in one go per (device, dtype): the tensors of
    a group are concatenated on their device and moved with one copy, not one copy (and one
    wait) per tensor. Each comes back with storage of its own (safetensors refuses shared or
    non-contiguous storage)."""
    groups: dict[tuple, list[str]] = {}
    for k, v in state.items():
        groups.setdefault((v.device, v.dtype), []).append(k)
    out: dict[str, torch.Tensor] = {}
    for keys in groups.values():
        flat = torch.cat([state[k].detach().reshape(-1) for k in keys]).to("cpu")
        for k, piece in zip(keys, flat.split([state[k].numel() for k in keys])):
            out[k] = piece.view(state[k].shape).clone()
    return {k: out[k] for k in state}


def _split_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(rest["scalars"].items()):
        pid, key = flat.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save(directory: str | Path, tag: str, model: torch.nn.Module, meta: dict,
         optimizer: torch.optim.Optimizer | None = None, ema: dict[str, torch.Tensor] | None = None) -> None:
    """Write the set ``tag``: the model, the optimizer (if given), the EMA network's state dict
    ``ema`` (if given) and the sidecar, last."""
    directory = Path(directory)
    with fileops.storage_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    meta = {"format": FORMAT, **meta, "weights": ["raw", "ema"] if ema is not None else ["raw"], "token": token}
    files = [(directory / f"{tag}.safetensors",
              lambda p: save_file(_tensors(model.state_dict()), str(p), metadata={"token": token}))]
    if ema is not None:
        files.append((directory / f"{tag}.ema.safetensors",
                      lambda p: save_file(_tensors(ema), str(p), metadata={"token": token})))
    if optimizer is not None:
        opt_tensors, opt_rest = _split_optimizer(optimizer.state_dict())
        meta["optimizer"] = opt_rest
        files.append((directory / f"{tag}.optim.safetensors",
                      lambda p: save_file(_tensors(opt_tensors), str(p), metadata={"token": token})))
    files.append((directory / f"{tag}.json",
                  lambda p: p.write_text(json.dumps(meta, indent=1, default=str))))
    for final, write in files:
        fileops.write_with(final, write)


def read_meta(path: str | Path) -> dict:
    """The sidecar of ``path`` (a ``.json``, a ``.safetensors`` or the tag's stem)."""
    sidecar = stem(path).with_suffix(".json")
    if not sidecar.is_file():
        raise CheckpointError(f"checkpoint sidecar {sidecar} not found; pass a run directory or "
                              "a <tag>.safetensors written by advrep (foreign weights: --arch/--weights)")
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{sidecar} is not valid JSON ({e.msg}); the checkpoint is damaged") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not an advrep checkpoint sidecar (format {meta.get('format')!r})")
    return meta


def stem(path: str | Path) -> Path:
    path = Path(path)
    for suffix in (".optim.safetensors", ".ema.safetensors", ".safetensors", ".json"):
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def _load_tensors(path: Path, token: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} not found")
    try:
        with safe_open(str(path), "pt") as f:
            file_token = (f.metadata() or {}).get("token")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); the checkpoint is damaged") from None
    if file_token != token:
        raise CheckpointError(f"{path} does not belong to its sidecar (an interrupted write?); "
                              "use the other checkpoint (best/last) of the run")
    return tensors


def has_ema(meta: dict) -> bool:
    return "ema" in meta.get("weights", ())


def chosen_weights(meta: dict, weights: str | None, where: str = "the checkpoint") -> str:
    """``raw`` or ``ema``: ``weights`` as asked, or, for None (auto), ``ema`` when the checkpoint
    holds EMA weights. Asking for EMA weights a checkpoint lacks is one clear error."""
    if weights is None:
        return "ema" if has_ema(meta) else "raw"
    if weights not in WEIGHTS:
        raise CheckpointError(f"unknown weights '{weights}'; use one of: {', '.join(WEIGHTS)}")
    if weights == "ema" and not has_ema(meta):
        raise CheckpointError(f"{where} holds no EMA weights (it was trained without --train.ema); "
                              "use --eval.weights=raw")
    return weights


def load(path: str | Path, optimizer: bool = True, weights: str | None = "raw"
         ) -> tuple[dict[str, torch.Tensor], dict, dict | None]:
    """Return ``(model_state, meta, optimizer_state or None)`` of an advrep checkpoint; with
    ``optimizer=False`` the optimizer file is not read (a model to evaluate needs none).
    ``weights``: ``raw`` (the trained network, what resume continues), ``ema`` (the moving
    average; an error if the checkpoint has none) or None (auto: ``ema`` when present)."""
    base = stem(path)
    meta = read_meta(base)
    suffix = ".ema.safetensors" if chosen_weights(meta, weights, str(base)) == "ema" else ".safetensors"
    state = _load_tensors(base.with_name(base.name + suffix), meta["token"])
    opt = None
    if optimizer and "optimizer" in meta:
        opt_tensors = _load_tensors(base.with_name(base.name + ".optim.safetensors"), meta["token"])
        opt = _join_optimizer(opt_tensors, meta["optimizer"])
    return state, meta, opt


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                       arch: str) -> None:
    """``load_state_dict`` with one clear line when the weights belong to another network."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs "
                         f"{tuple(own[k].shape)})")
        raise CheckpointError(f"weights in {source} do not fit architecture '{arch}': "
                              f"{'; '.join(parts)}; pass the architecture they were trained with")
    model.load_state_dict(state)
