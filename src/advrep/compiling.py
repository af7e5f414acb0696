"""``torch.compile`` for training: one static graph per mode the loop uses, and what must run
around it.

:func:`compile_model` compiles a model's ``forward_features`` (or, for a plain module,
``forward``) in place with ``dynamic=False``: shapes are fixed, so a batch of another size
would be a graph of its own, never a switch to dynamic-shape graphs. The trainer therefore
feeds the compiled model full batches only (:class:`advrep.data.loader.DeviceLoader`'s
``full_batches``) and the validation probe pads its last batch (:class:`advrep.readouts.Probe`).

Dynamo keeps one graph per mode and reuses it: training (train-mode BatchNorm, gradients to
the parameters), the attack (eval-mode BatchNorm, gradients to the input only, parameters
frozen; under autocast the first step from TRADES' tiny start in fp32, the others in bf16),
the clean targets of KL attacks (fp32, no gradients), and the validation's attack and passes
(fp32). That is at most 6 for TRADES-like methods, under dynamo's recompile limit (8),
so the run never falls back to eager silently (tests/test_fast_path.py runs the trainer with
``fail_on_recompile_limit_hit``).

What a compiled model changes elsewhere:

- forward hooks added after compilation are not seen by the compiled graph, so
  ``forward_stages`` (the per-stage read-outs) runs the model's eager ``forward_features``
  (:func:`eager_forward_features`);
- the attack freezes the parameters only on a compiled model (:func:`is_compiled`): there the
  graph then leaves out the weight gradients; in eager, ``autograd.grad`` with respect to the
  input skips them anyway, and frozen weights would defeat autocast's weight-cast cache;
- with ``reduce-overhead`` (CUDA graphs) a graph's outputs live in memory that the next replay
  overwrites, so whoever keeps outputs across calls clones them (:func:`kept`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

COMPILE_BACKEND = "inductor"  # tests swap in a backend that counts the graphs and runs them as captured
_MARK = "_advrep_compiled"  # the attribute compile_model sets: the mode the model was compiled with


def compile_model(model: nn.Module, mode: str) -> nn.Module:
    """``torch.compile`` the model's forward pass in place, once, with static shapes. The
    parameters, state dict and attributes stay the module's own, so the methods, the attacks,
    DDP and checkpoints see the same object."""
    if is_compiled(model):
        return model
    name = "forward_features" if hasattr(model, "forward_features") else "forward"
    kwargs = {"backend": COMPILE_BACKEND, "dynamic": False}
    if COMPILE_BACKEND == "inductor" and mode != "default":
        kwargs["mode"] = mode
    setattr(model, name, torch.compile(getattr(model, name), **kwargs))
    setattr(model, _MARK, mode)
    return model


def is_compiled(model: nn.Module) -> bool:
    """Whether :func:`compile_model` compiled ``model`` (or the model a DDP wrapper holds)."""
    inner = getattr(model, "module", None)
    inner = getattr(inner, "model", inner)  # DataParallel wraps an entry module around the model
    return bool(getattr(model, _MARK, None) or (inner is not None and getattr(inner, _MARK, None)))


def eager_forward_features(model: nn.Module):
    """The model's own ``forward_features``, uncompiled (the class's method, not the compiled
    function :func:`compile_model` put on the instance)."""
    return type(model).forward_features.__get__(model)


def kept(t: torch.Tensor) -> torch.Tensor:
    """``t`` in fp32 (at least), in memory of its own: a copy when the conversion would return
    ``t`` itself, so a later CUDA-graph replay cannot overwrite what the caller keeps."""
    out = t.float() if t.dtype not in (torch.float32, torch.float64) else t
    return out.clone() if out.data_ptr() == t.data_ptr() else out
