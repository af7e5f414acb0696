"""Feature-space analysis of a trained model: ``advrep analyze RUN_DIR``.

The seed papers argue with geometry: compact classes, separated class centres or prototypes,
clean and adversarial features that stay together. This module measures those on the
penultimate features ``h`` of test images and of their PGD adversarial examples (the run's
threat model; ``eval.pgd_steps`` steps of ``eval.pgd_step_size``, one uniform random start),
both grouped by the *true* label, from one :class:`~advrep.readouts.Probe`:

- **compactness** ``C = mean_k mean_{i: y_i = k} ‖h_i − μ_k‖₂``, with ``μ_k`` the mean feature of
  class ``k`` on the same side (clean or adversarial); every class present weighs the same;
- **separation** ``S_min = min_{a≠b} ‖μ_a − μ_b‖₂`` and ``S_mean = mean_{a<b} ‖μ_a − μ_b‖₂``;
- **Fisher-style scores** ``F_min = S_min / C`` and ``F_mean = S_mean / C``: distances over
  distances (not the variances of Fisher's ratio), so they do not change when the features are
  scaled; ``F_min > 2`` means the two closest class means are farther apart than the mean radii
  of both classes together;
- **angles** (degrees) between the clean class means, or between the head's prototypes for a
  ``prototype`` head (``model.head.prototypes()``), measured about the origin, as a cosine or
  prototype head sees directions;
- **clean-to-adversarial distance per stage**: ``mean_i ‖a_i − a'_i‖₂`` at the output of every
  stage of ``model.forward_stages`` (and its ratio to ``mean_i ‖a_i‖₂``), from the
  ``stage_divergence`` read-out;
- **a 2-D embedding** of the clean and adversarial features of the first ``EMBED_MAX_IMAGES``
  images, both in one fit: PCA, or advrep's exact t-SNE (van der Maaten & Hinton, JMLR 2008),
  written in torch so no extra package is needed.

The method-specific read-outs of :data:`advrep.readouts.READOUTS` run on the same probe: by
default the ones the run's method lists, or ``--readouts=[...]``. Numbers go to
``analysis.json``, pictures to PNG files beside it (default: ``RUN_DIR/analysis/``)::

    advrep analyze runs/pgd-at-mnist-small-cnn --n 1000 --embedding tsne
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from . import __version__, contributions, methods, readouts  # noqa: F401  (these register read-outs)
from .errors import ConfigError
from .readouts import Probe

EMBED_MAX_IMAGES = 500  # exact t-SNE is O(N²) per iteration: 1,000 points (clean + adv) take ~15 s on a CPU
EMBEDDINGS = ("tsne", "pca")


# ----------------------------------------------------------------------------- metrics


def class_means(h: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(means (K, d), present (K,) bool)``; rows of classes without samples are zero."""
    counts = torch.bincount(y, minlength=num_classes)
    means = torch.zeros(num_classes, h.shape[1], dtype=torch.float64, device=h.device)
    means.index_add_(0, y, h.double())
    return means / counts.clamp_min(1)[:, None], counts > 0


def geometry(h: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Compactness, separation and Fisher-style scores of features ``h`` grouped by ``y``
    (definitions in the module docstring); needs samples of at least two classes."""
    means, present = class_means(h, y, num_classes)
    if int(present.sum()) < 2:
        raise ConfigError("the feature geometry needs images of at least two classes; raise --n")
    dist = (h.double() - means[y]).norm(dim=1)
    per_class = torch.zeros(num_classes, dtype=torch.float64, device=h.device).index_add_(0, y, dist)
    per_class = per_class / torch.bincount(y, minlength=num_classes).clamp_min(1)
    compact = per_class[present].mean().item()
    mp = means[present]
    pair = torch.cdist(mp, mp)[torch.triu(torch.ones(len(mp), len(mp), dtype=torch.bool), 1)]
    s_min, s_mean = pair.min().item(), pair.mean().item()
    return {"compactness": compact,
            "compactness_per_class": [v if p else None for v, p in zip(per_class.tolist(), present.tolist())],
            "separation_min": s_min, "separation_mean": s_mean,
            "fisher_min": s_min / max(compact, 1e-12), "fisher_mean": s_mean / max(compact, 1e-12)}


def angle_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Angles in degrees (K, K) between the rows of ``vectors``, about the origin."""
    unit = torch.nn.functional.normalize(vectors.double(), dim=1)
    cos = (unit @ unit.T).clamp(-1, 1)
    cos.fill_diagonal_(1.0)  # exactly 0° to itself, whatever the rounding
    return torch.rad2deg(torch.arccos(cos))


def angles(probe: Probe) -> dict:
    """The angle matrix of the prototypes (``prototype`` head) or of the clean class means."""
    h, logits = probe.clean
    head = getattr(probe.model, "head", None)
    if hasattr(head, "prototypes"):
        with torch.no_grad():
            vectors, kind = head.prototypes().detach(), "prototypes"
        present = torch.ones(len(vectors), dtype=torch.bool)
    else:
        (vectors, present), kind = class_means(h, probe.y, logits.shape[1]), "class means"
    matrix = angle_matrix(vectors).cpu()
    present = present.cpu()
    off = present[:, None] & present[None, :] & ~torch.eye(len(matrix), dtype=torch.bool)
    return {"vectors": kind, "classes": present.nonzero().squeeze(1).tolist(),
            "matrix_deg": [[round(v, 3) for v in row] for row in matrix[present][:, present].tolist()],
            "min_deg": matrix[off].min().item(), "mean_deg": matrix[off].mean().item()}


def stage_distances(divergence: dict) -> dict:
    """The ``stage_divergence`` read-out's result as lists in stage order (input to output)."""
    names = [k.removeprefix("raw:") for k in divergence if k.startswith("raw:")]
    return {"stages": names, "distance": [divergence[f"raw:{s}"] for s in names],
            "relative": [divergence[f"relative:{s}"] for s in names]}


# ----------------------------------------------------------------------------- embeddings


def pca(x: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(coords (N, k), components (k, d), explained variance ratio (k,))`` of the centred
    rows of ``x``; each component's sign makes its largest loading positive (reproducible)."""
    xc = x.double() - x.double().mean(0)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    comps = vt[:k]
    comps = comps * torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    var = s.square()
    return xc @ comps.T, comps, var[:k] / var.sum().clamp_min(1e-300)


def conditional_p(d2: torch.Tensor, perplexity: float, tol: float = 1e-5, max_iters: int = 100) -> torch.Tensor:
    """Rows ``p_{j|i} ∝ exp(−β_i d²_ij)`` (``p_{i|i} = 0``), each ``β_i`` found by bisection so
    that the row's entropy is ``log(perplexity)`` (nats, within ``tol``), as t-SNE defines it."""
    n = len(d2)
    target = math.log(perplexity)
    off = ~torch.eye(n, dtype=torch.bool, device=d2.device)
    # the shift by the row's nearest distance leaves every p unchanged and keeps exp() from underflowing
    d = (d2 - d2.masked_fill(~off, math.inf).amin(1, keepdim=True)).masked_fill(~off, 0)
    beta = torch.ones(n, 1, dtype=d2.dtype, device=d2.device)
    lo, hi = torch.zeros_like(beta), torch.full_like(beta, math.inf)
    for _ in range(max_iters):
        w = torch.exp(-beta * d) * off
        z = w.sum(1, keepdim=True)
        entropy = torch.log(z) + beta * (w * d).sum(1, keepdim=True) / z
        if (entropy - target).abs().max() < tol:
            break
        too_flat = entropy > target  # too many neighbours: sharpen
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
    return w / z


def tsne(x: torch.Tensor, perplexity: float = 30.0, iters: int = 1000, exaggeration: float = 12.0,
         exaggerated_iters: int = 250) -> tuple[torch.Tensor, float]:
    """Exact t-SNE of the rows of ``x`` into 2-D: ``(coords (N, 2), final KL(P‖Q))``.

    Gradient descent with momentum (0.5, then 0.8) and per-coordinate gains (Jacobs' rule, as
    the reference implementation), early exaggeration ×12 for the first 250 iterations, learning
    rate ``max(N / 12 / 4, 50)`` (Belkina et al., Nat. Commun. 2019) and a PCA start scaled to a
    standard deviation of 1e-4, so the result is deterministic. P in float64, the descent in
    float32. O(N²) memory and time per iteration: use ≲ 2,000 points.
    """
    n = len(x)
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)  # a point cannot have more neighbours than there are
    x = x.double()
    p = conditional_p(torch.cdist(x, x).square(), perplexity)
    p = ((p + p.T) / (2 * n)).float()
    y = pca(x, 2)[0]
    y = (y / y[:, 0].std().clamp_min(1e-300) * 1e-4).float()
    lr = max(n / exaggeration / 4, 50.0)
    update, gains = torch.zeros_like(y), torch.ones_like(y)
    for it in range(iters):
        sq = y.square().sum(1)
        # Student-t kernel 1 / (1 + ‖y_i − y_j‖²), built in place: this loop is the whole cost
        num = torch.addmm(sq[:, None] + sq[None, :], y, y.T, alpha=-2).clamp_min_(0).add_(1).reciprocal_()
        num.fill_diagonal_(0)
        z = num.sum()
        pq = (p * (exaggeration if it < exaggerated_iters else 1.0)).sub_(num / z).mul_(num)  # (p − q)·num
        grad = 4 * (pq.sum(1, keepdim=True) * y - pq @ y)
        gains = torch.where((grad > 0) != (update > 0), gains + 0.2, gains * 0.8).clamp_min(0.01)
        update = (0.5 if it < exaggerated_iters else 0.8) * update - lr * gains * grad
        y = y + update
    q = num / z
    off = ~torch.eye(n, dtype=torch.bool)
    kl = (p[off].double() * torch.log(p[off].double().clamp_min(1e-12) / q[off].double().clamp_min(1e-12))).sum()
    return y.double(), kl.item()


def embed(h: torch.Tensor, h_adv: torch.Tensor, method: str, perplexity: float = 30.0) -> tuple[torch.Tensor, dict]:
    """Clean and adversarial features in one 2-D fit: ``(coords (2m, 2), facts)``, the
    clean rows first."""
    both = torch.cat([h, h_adv]).double().cpu()
    if method == "pca":
        coords, _, ratio = pca(both)
        return coords, {"method": "pca", "implementation": "advrep (torch SVD)",
                        "explained_variance_ratio": ratio.tolist()}
    if method == "tsne":
        coords, kl = tsne(both, perplexity)
        return coords, {"method": "tsne", "implementation": "advrep exact t-SNE (torch)",
                        "perplexity": min(perplexity, (len(both) - 1) / 3), "iterations": 1000, "kl": kl}
    raise ConfigError(f"unknown embedding '{method}'; choose from: {', '.join(EMBEDDINGS)}")


# ----------------------------------------------------------------------------- the command


def analyze(probe: Probe, readout_names=(), embedding: str = "tsne",
            max_images: int = EMBED_MAX_IMAGES) -> tuple[dict, dict]:
    """Every metric of the module docstring on ``probe``: ``(result, figures)``, the result
    JSON-serializable and the figures keyed by file stem."""
    from . import plots

    (h, logits), (h_adv, _), y = probe.clean, probe.adv, probe.y
    k = logits.shape[1]
    names = list(dict.fromkeys(readout_names))
    ran = readouts.run(list(dict.fromkeys([*names, "stage_divergence"])), probe)
    m = min(len(y), max_images)
    coords, facts = embed(h[:m], h_adv[:m], embedding)
    result = {
        "n": len(y), "num_classes": k, "attack": {"name": "pgd", **probe.attack}, "accuracy": probe.accuracies(),
        "geometry": {"clean": geometry(h, y, k), "adv": geometry(h_adv, y, k)},
        "angles": angles(probe), "stages": stage_distances(ran["stage_divergence"]),
        "embedding": {**facts, "images": m, "points": 2 * m},
        "readouts": {name: ran[name] for name in names},
    }
    figures = {
        "embedding": plots.embedding(coords, y[:m].cpu(), facts, probe.attack),
        "angles": plots.angles(result["angles"]),
        "geometry": plots.geometry(result["geometry"]),
        "stages": plots.stages(result["stages"], probe.attack),
    }
    figures.update({name: readouts.PLOTS[name](ran[name]) for name in names if name in readouts.PLOTS})
    return result, figures


def write(out_dir: Path, result: dict, figures: dict) -> dict:
    """``analysis.json`` (the result with the list of pictures, returned) and one PNG per
    figure in ``out_dir``."""
    from .plots import save

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        save(fig, out_dir / f"{name}.png")
    result = {**result, "figures": [f"{name}.png" for name in figures]}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    return result


def load_run(run_dir: Path, overrides=(), progress: bool = True):
    """``(cfg, model, meta, splits, device)`` of a run directory's chosen checkpoint
    (``eval.checkpoint``, with the weights ``eval.weights`` chooses: auto is the EMA network when the
    run has one), with the dataset-dependent config autos resolved."""
    from . import config as config_mod
    from .factory import load_data, model_from_checkpoint, resolve_device
    from .runs import Run

    run = Run.open(run_dir)
    cfg = run.config(overrides)
    stem = run.checkpoint(cfg.eval.checkpoint)
    device = resolve_device(cfg.device)
    splits = load_data(cfg.data, progress=progress)
    cfg = config_mod.resolve(cfg, splits.info)
    model, meta = model_from_checkpoint(stem, device, cfg.eval.weights)
    return cfg, model, meta, splits, device


def analyze_run(run_dir: Path, overrides=(), out_dir: Path | None = None, readout_names=None,
                embedding: str = "tsne", progress: bool = True) -> tuple[dict, Path]:
    """Analyze a run directory on its first ``eval.n`` test images (1,000 if unset) and write
    the results; ``readout_names`` None means the ones the run's method lists."""
    from .methods import readouts_of

    if embedding not in EMBEDDINGS:
        raise ConfigError(f"unknown embedding '{embedding}'; choose from: {', '.join(EMBEDDINGS)}")
    t0 = time.time()
    run_dir = Path(run_dir)
    cfg, model, meta, splits, device = load_run(run_dir, overrides, progress)
    for name in readout_names or ():
        readouts.READOUTS.get(name)  # an unknown name fails before the attack runs
    names = readouts_of(meta["method"]) if readout_names is None else readout_names
    n = cfg.eval.n or 1000
    torch.manual_seed(cfg.seed)  # PGD's random start: the same numbers on every call
    probe = Probe(model, splits.x_test[:n], splits.y_test[:n], norm=cfg.threat.norm, eps=cfg.threat.eps,
                  step_size=cfg.eval.pgd_step_size, steps=cfg.eval.pgd_steps, device=device,
                  batch_size=cfg.eval.batch_size)
    result, figures = analyze(probe, names, embedding)
    context = {"run": str(run_dir), "checkpoint": cfg.eval.checkpoint, "weights": meta["loaded_weights"],
               "epoch": meta.get("epoch"),
               "method": meta.get("method"), "architecture": meta["arch"], "dataset": splits.info.name}
    result = {**context, **result, "advrep_version": __version__, "torch_version": torch.__version__,
              "device": str(device), "time_s": round(time.time() - t0, 1)}
    out_dir = Path(out_dir) if out_dir else run_dir / "analysis"
    return write(out_dir, result, figures), out_dir
