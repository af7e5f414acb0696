"""Read-out ``stage_divergence``: how far apart the clean and the adversarial representations are
at the output of every stage of the network, the measurement that motivates ADR (Bui et al.,
ECCV 2020, arXiv 2007.05123; after Liao et al., CVPR 2018): does the divergence grow with depth,
and does a method reduce it?

For each stage ``s`` of ``model.forward_stages(x)`` (the architecture's stages, then
``features`` and ``logits``), with ``a_i`` the flattened clean output of image ``i`` and ``a'_i``
its adversarial one (the probe's PGD examples, model in eval mode):

- ``relative:<s>`` = ``mean_i ‖a_i − a'_i‖₂ / mean_i ‖a_i‖₂``, scale-free, so stages of different
  size and magnitude compare on one axis;
- ``raw:<s>`` = ``mean_i ‖a_i − a'_i‖₂``, the unnormalized distance.

Keys keep the stage order, input to output. Logged per epoch by every run of the ``adr`` term;
any other run asks for it with ``--train.readouts=[stage_divergence]`` or
``--eval.readouts=[stage_divergence]``, for example::

    advrep eval runs/pgd-at --n 1000 --eval.readouts=[stage_divergence]
"""

from __future__ import annotations

import torch

from ..readouts import Probe, register_readout


def plot_stage_divergence(result: dict):
    """Relative divergence against stage, one line."""
    from matplotlib.figure import Figure

    stages = [k.removeprefix("relative:") for k in result if k.startswith("relative:")]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(range(len(stages)), [result[f"relative:{s}"] for s in stages], marker="o")
    ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax.set_xlabel("stage (input → output)")
    ax.set_ylabel("mean ‖a − a′‖ / mean ‖a‖")
    ax.set_title("clean vs adversarial representation, per stage")
    ax.grid(alpha=0.3)
    return fig


@register_readout("stage_divergence", plot=plot_stage_divergence)
def stage_divergence(probe: Probe) -> dict:
    model, x_adv = probe.model, probe.x_adv  # the attack (on first use) needs gradients: outside no_grad
    was_training = model.training
    model.eval()
    diff_sums: dict[str, torch.Tensor] = {}
    norm_sums: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for xb, xb_adv in probe.batches(probe.x, x_adv):
                clean, adv = model.forward_stages(xb), model.forward_stages(xb_adv)
                for stage, a in clean.items():
                    a, a_adv = a.flatten(1).float(), adv[stage].flatten(1).float()
                    # per-image norms in fp32 (a WRN stage of a 500-image batch is 82M numbers), sums in fp64
                    diff_sums[stage] = diff_sums.get(stage, 0) + (a - a_adv).norm(dim=1).double().sum()
                    norm_sums[stage] = norm_sums.get(stage, 0) + a.norm(dim=1).double().sum()
    finally:
        model.train(was_training)
    n = len(probe.y)
    raw = {s: (v / n).item() for s, v in diff_sums.items()}
    # the floor only guards a stage whose clean output is all zeros (as feature_shift does)
    relative = {s: raw[s] / max(norm_sums[s].item() / n, 1e-12) for s in raw}
    return {**{f"relative:{s}": v for s, v in relative.items()}, **{f"raw:{s}": v for s, v in raw.items()}}
