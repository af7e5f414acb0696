"""SPAT's read-outs: which class pairs are hard, and where the attack sends each class.

``hard_pairs`` — a class pair's score is the mean, over the images of the true class ``t``, of
the non-target class ``j``'s score; each true class's most confused class is the ``j`` with the
largest mean, and the ``TOP`` pairs (true class, most confused class) with the largest mean are
listed, with the number of images of the true class. Averaging over a whole class (advrep's
reading of "mean factor of a pair") keeps a pair met by one odd image from topping the list.
The score is SPAT's non-target factor without its constant margin: the cosine
``c_j = logits_j / scale`` for a cosine head (the factor is ``c_j + m``, so the ranking is that of
the factor for any m), and for any other head the softmax probability ``p_j`` (advrep's reading:
like ``c_j + m`` it grows as the class moves towards the sample). Computed on clean images:
the factor SPAT's accuracy loss applies.

``adv_confusion`` — the confusion matrix of the predictions under the probe's PGD attack
(rows: true class, columns: predicted class; counts over all images, whether or not the clean
prediction was right) and ``accuracy``, its diagonal share, with a picture of the
row-normalized matrix.

Both work for any model with ``forward_features``, so a ``trades`` run can log them too::

    advrep train --config configs/trades-mnist-small-cnn.yaml \\
        --train.readouts=[hard_pairs,adv_confusion] --eval.readouts=[hard_pairs,adv_confusion]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.heads import CosineHead
from ..readouts import Probe, register_readout

TOP = 5  # pairs listed per read-out


def pair_scores(model, logits: torch.Tensor) -> tuple[str, torch.Tensor]:
    """``(kind, scores)``: cosines for a cosine head, softmax probabilities otherwise."""
    head = getattr(model, "head", None)
    if isinstance(head, CosineHead):
        return "cosine", logits / head.scale
    return "softmax", F.softmax(logits, dim=1)


def hardest_pairs(scores: torch.Tensor, y: torch.Tensor, top: int = TOP) -> list[dict]:
    """The ``top`` pairs (true class, most confused class) by the class-mean score."""
    k = scores.shape[1]
    members = F.one_hot(y, k).double()
    count = members.sum(0)
    mean = members.T @ scores.double() / count.clamp_min(1)[:, None]  # (true, other): mean score
    mean.fill_diagonal_(float("-inf"))
    value, confused = mean.max(1)
    present = count.nonzero().squeeze(1)
    order = present[value[present].argsort(descending=True, stable=True)[:top]]
    return [{"true": int(t), "confused": int(confused[t]), "score": round(float(value[t]), 4), "n": int(count[t])}
            for t in order]


def confusion(pred: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """``(k, k)`` counts: row = true class, column = predicted class."""
    return torch.bincount(y * k + pred, minlength=k * k).view(k, k)


def plot_confusion(result: dict):
    import matplotlib.pyplot as plt

    counts = torch.tensor(result["matrix"], dtype=torch.float64)
    share = counts / counts.sum(1, keepdim=True).clamp_min(1)
    k = len(counts)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 20:  # counts stay readable up to CIFAR-10/MNIST sizes
        for t in range(k):
            for p in range(k):
                if counts[t, p]:
                    ax.text(p, t, int(counts[t, p]), ha="center", va="center", fontsize=6,
                            color="white" if share[t, p] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted class under attack")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion under PGD (accuracy {100 * result['accuracy']:.1f}%)")
    return fig


@register_readout("hard_pairs")
def hard_pairs(probe: Probe) -> dict:
    """The class pairs with the largest mean non-target factor (see the module docstring)."""
    kind, scores = pair_scores(probe.model, probe.clean[1])
    return {"score": kind, "pairs": hardest_pairs(scores, probe.y)}


@register_readout("adv_confusion", plot=plot_confusion)
def adv_confusion(probe: Probe) -> dict:
    """The confusion matrix under the probe's PGD attack."""
    logits = probe.adv[1]
    pred = logits.argmax(1)
    return {"matrix": confusion(pred, probe.y, logits.shape[1]).tolist(),
            "accuracy": (pred == probe.y).float().mean().item()}
