"""What an evaluation costs, before and after: the cost model, the pass counter, the stage log.

- :func:`expected` is the cost model: for each stage of an evaluation (clean, each attack, the
  eps sweep, the checks, the corruptions), the forward and backward passes per image it needs at
  most (attacks that stop on success, AutoAttack and Square, often need fewer). ``advrep eval``
  prints the total as passes × images before it starts, so a user can cut it first.
- :class:`PassCounter` counts the passes that really ran: a forward hook on the model adds each
  batch's size, and a hook on the output's gradient adds it again for each backward pass through
  the model (``torch.autograd.grad`` included). Each report states every attack's counts and
  wall time.
- :class:`StageLog` prints one line per stage with its time, the time elapsed and an estimate
  of what is left (from the cost model and the speed measured so far), wherever the output goes;
  tqdm bars show progress inside a stage on a terminal.

Counts are image-passes: a batch of 500 images through the model once is 500 forward passes.
"""

from __future__ import annotations

import sys
import time

import torch

# The official AutoAttack's attacks at its versions' settings (autoattack.py's _set_version):
# iterations × restarts or target classes. Backward passes: one per gradient iteration (FAB's
# per-iteration Jacobian of the two logits it needs counts as one).
_APGD_ITERS, _SQUARE_QUERIES = 100, 5000


def _aa_runs(version: str, attacks: list[str], norm: str) -> dict[str, int]:
    """``{attack: gradient runs of 100 iterations}`` (Square: 0) for an AutoAttack version."""
    if version == "standard":
        if norm == "L1":
            return {"apgd-ce": 5, "apgd-t": 5, "fab-t": 9, "square": 0}
        return {"apgd-ce": 1, "apgd-t": 9, "fab-t": 9, "square": 0}
    if version == "plus":
        return {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "square": 0, "apgd-t": 9, "fab-t": 9}
    if version == "rand":  # EOT over 20 draws per iteration
        return {"apgd-ce": 20, "apgd-dlr": 20}
    # custom: the constructor's defaults (5 restarts, 9 target classes)
    defaults = {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5, "apgd-t": 9, "fab-t": 9, "square": 0}
    return {a: defaults[a] for a in attacks}


def attack_passes(name: str, ev, threat, num_classes: int) -> tuple[int, int]:
    """``(forward, backward)`` passes per image of evaluation attack ``name`` at most, scoring
    its examples included."""
    if name == "fgsm":
        return 2, 1
    if name in ("pgd", "cw", "ra-soft"):
        steps = ev.cw_steps if name == "cw" else ev.pgd_steps
        r = ev.pgd_restarts
        return steps * r + (r if r > 1 else 0) + 1, steps * r
    if name == "mt":
        runs = num_classes - 1
        return runs * (ev.pgd_steps + 1) + 1, runs * ev.pgd_steps
    if name == "square":
        return ev.square_queries + 4, 0  # the code's initial and final queries
    if name == "autoattack":
        runs = _aa_runs(ev.aa_version, list(ev.aa_attacks), threat.norm)
        grad = sum(r * _APGD_ITERS for a, r in runs.items() if a != "square")
        fwd = grad + len(runs) + (_SQUARE_QUERIES if "square" in runs else 0) + 1
        return fwd, grad
    return 0, 0  # an attack the cost model does not know: counted when it runs, not foreseen


def checks_passes(ev, has_surrogate: bool) -> tuple[int, int]:
    """``(forward, backward)`` per checked image of the gradient-masking checks."""
    k = ev.pgd_steps
    fwd = 1 + (k + 1) + 6 * (k + 1) + (15 * k + 3 + 1) + (ev.square_queries + 4)
    bwd = k + 6 * k + 15 * k
    if has_surrogate:  # the surrogate's passes are its own; scoring the transferred examples is the model's
        fwd += 1
    return fwd, bwd


def expected(ev, threats: list, num_classes: int, n: int, corruption_cells: int, surrogate: bool) -> dict:
    """The cost model of one evaluation: ``{"stages": [{"stage", "images", "forward", "backward"}],
    "forward", "backward", "units"}``, totals in image-passes. ``threats`` lists the threat
    models whose attacks run as ``(threat, suffix)``, the suffix that follows each attack's
    label in the log (the first is the main one, with no suffix and the only one with checks and
    sweep);
    ``corruption_cells`` is corruptions × severities (one forward pass per image each)."""
    from .attacks import ATTACKS

    stages = [{"stage": "clean", "images": n, "forward": n, "backward": 0}]
    for threat, suffix in threats:
        for name in ev.attacks:
            f, b = attack_passes(name, ev, threat, num_classes)
            label = ATTACKS.get(name).label(ev) if name in ATTACKS else name
            stages.append({"stage": label + suffix, "images": n, "forward": f * n, "backward": b * n})
    if ev.eps_sweep:
        stages.append({"stage": "eps sweep", "images": n, "forward": len(ev.eps_sweep) * (ev.pgd_steps + 1) * n,
                       "backward": len(ev.eps_sweep) * ev.pgd_steps * n})
    if ev.checks:
        k = min(ev.checks_n, n)
        f, b = checks_passes(ev, surrogate)
        stages.append({"stage": "gradient-masking checks", "images": k, "forward": f * k, "backward": b * k})
    if corruption_cells:
        stages.append({"stage": "corruptions", "images": n, "forward": corruption_cells * n, "backward": 0})
    fwd, bwd = sum(s["forward"] for s in stages), sum(s["backward"] for s in stages)
    return {"stages": stages, "forward": fwd, "backward": bwd, "units": units(fwd, bwd)}


def units(forward: int, backward: int) -> float:
    """Work in forward-pass equivalents: a backward pass costs about two forward passes."""
    return forward + 2 * backward


def summary_line(plan: dict, n: int) -> str:
    """The up-front line: ``expected cost: at most F forward + B backward passes (N images): ...``."""
    worst = sorted(plan["stages"], key=lambda s: -units(s["forward"], s["backward"]))[:3]
    parts = ", ".join(f"{s['stage']} {_count(s['forward'] + s['backward'])}" for s in worst)
    return (f"expected cost: at most {_count(plan['forward'])} forward + {_count(plan['backward'])} backward "
            f"image-passes on {n} images (largest: {parts}); cut it with --n, --eval.attacks, --eval.checks=false")


def _count(k: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if k >= size:
            return f"{k / size:.3g}{suffix}"
    return f"{k:.0f}"


class PassCounter:
    """Counts the image-passes through ``model`` while active (``with PassCounter(model) as c``):
    ``c.forward``, ``c.backward``. Counters nest: each active one counts."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.forward, self.backward, self._handle = model, 0, 0, None

    def _hook(self, module, inputs, output):
        if not inputs or not isinstance(inputs[0], torch.Tensor):
            return
        size = len(inputs[0])
        self.forward += size
        if isinstance(output, torch.Tensor) and output.requires_grad:
            def count(grad, size=size):
                self.backward += size
            output.register_hook(count)

    def __enter__(self) -> "PassCounter":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    def facts(self, n: int, wall_s: float) -> dict:
        """``{"forward", "backward", "forward_per_image", "backward_per_image", "wall_s"}``."""
        return {"forward": self.forward, "backward": self.backward,
                "forward_per_image": round(self.forward / max(n, 1), 2),
                "backward_per_image": round(self.backward / max(n, 1), 2), "wall_s": round(wall_s, 2)}


class StageLog:
    """One line per stage, ``advrep: [2/6] PGD-20 done in 41 s (elapsed 52 s, about 3 min left)``,
    printed to stderr as each stage ends (and when it starts). ``plan`` (from :func:`expected`)
    gives the estimate: the time so far over the work done so far, times the work left. A stage
    outside the plan (the surrogate's training) is logged without a number and its time kept out
    of the speed. Silent when ``enabled`` is false."""

    def __init__(self, plan: dict | None, enabled: bool = True, stream=None):
        self.plan, self.enabled, self.stream = plan, enabled, stream or sys.stderr
        self.t0, self.done_units, self.done_stages = time.time(), 0.0, 0
        self.unplanned_s = 0.0  # time in stages outside the plan: not part of the measured speed
        self.total = len(plan["stages"]) if plan else None

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"advrep: {text}", file=self.stream, flush=True)

    def _where(self, stage: str, index: int) -> str:
        """``[i/N] `` for a stage of the plan; nothing for one outside it (the surrogate's training)."""
        return f"[{index}/{self.total}] " if self.total and self._planned(stage) is not None else ""

    def start(self, stage: str) -> float:
        self.say(f"{self._where(stage, self.done_stages + 1)}{stage} ...")
        return time.time()

    def end(self, stage: str, started: float, forward: int = 0, backward: int = 0, note: str = "") -> None:
        planned = self._planned(stage)
        took, elapsed = time.time() - started, time.time() - self.t0
        if planned is not None:
            self.done_stages += 1
            self.done_units += planned
        else:
            self.unplanned_s += took
        left = ""
        if self.plan and self.done_units > 0:
            remaining = max(self.plan["units"] - self.done_units, 0)
            rate = max(elapsed - self.unplanned_s, 0.0) / self.done_units
            left = f", about {_duration(rate * remaining)} left" if remaining else ", done"
        self.say(f"{self._where(stage, self.done_stages)}{stage} done in {_duration(took)}"
                 f"{': ' + note if note else ''} (elapsed {_duration(elapsed)}{left})")

    def _planned(self, stage: str) -> float | None:
        for s in (self.plan or {}).get("stages", ()):
            if s["stage"] == stage:
                return units(s["forward"], s["backward"])
        return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
