"""The pictures of ``advrep analyze`` and ``advrep compare``: matplotlib figures (no pyplot
state, so they work headless and in threads), each with a title, labelled axes with units, a
legend, and colour-blind-safe colours (Paul Tol's schemes): "muted" plus black for up to 10
classes, "bright" for up to 7 runs, viridis beyond that.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import fileops

# Paul Tol's muted qualitative scheme (personal.sron.nl/~pault), distinct under the common
# colour-vision deficiencies; black as the tenth colour for 10-class datasets.
PALETTE = ("#332288", "#88CCEE", "#44AA99", "#117733", "#999933", "#DDCC77", "#CC6677", "#882255",
           "#AA4499", "#000000")


# Paul Tol's "bright" scheme, for runs: lines that stay apart in colour and in lightness.
RUN_PALETTE = ("#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB")


def colors(k: int, palette: tuple = PALETTE) -> list:
    if k <= len(palette):
        return list(palette[:k])
    from matplotlib import colormaps

    return [colormaps["viridis"](i / max(k - 1, 1)) for i in range(k)]


def _figure(width: float, height: float, cols: int = 1, share: bool = False):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, cols, squeeze=False, sharex=share, sharey=share)[0]


def save(fig, path: Path) -> None:
    """PNG at 110 dpi, trimmed to its content (nothing cut off, no overlap at the edges),
    written atomically."""
    import matplotlib.pyplot as plt

    try:
        fileops.write_with(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)  # read-outs' plots may come from pyplot; a no-op for the others


def attack_text(attack: dict) -> str:
    return f"PGD-{attack['steps']}, {attack['norm']} eps {attack['eps']:.4g}"


def embedding(coords: torch.Tensor, y: torch.Tensor, facts: dict, attack: dict):
    """Clean (left) and adversarial (right) features of the same fit, coloured by true class,
    each class's clean centre labelled on both panels."""
    m = len(y)
    k = int(y.max()) + 1
    palette = colors(k)
    if facts["method"] == "pca":
        r = facts["explained_variance_ratio"]
        labels = [f"PC {i + 1} ({100 * r[i]:.0f}% of variance; feature units)" for i in range(2)]
    else:
        labels = [f"t-SNE {i + 1} (arbitrary units)" for i in range(2)]
    fig, axes = _figure(11, 5, 2, share=True)
    centres = {c: coords[:m][y == c].mean(0) for c in range(k) if (y == c).any()}
    for ax, part, title in ((axes[0], coords[:m], "clean test images"),
                            (axes[1], coords[m:], f"adversarial ({attack_text(attack)})")):
        for c in centres:
            pts = part[y == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=7, alpha=0.7, color=palette[c], label=str(c), linewidths=0)
        for c, centre in centres.items():
            ax.annotate(str(c), centre.tolist(), ha="center", va="center", fontsize=9, fontweight="bold",
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec=palette[c], alpha=0.85))
        ax.set_title(title)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    name = "t-SNE" if facts["method"] == "tsne" else "PCA"
    fig.suptitle(f"Penultimate features, {name} of clean and adversarial together ({m} images each); "
                 "numbers: clean class centres")
    if k <= len(PALETTE):
        axes[1].legend(title="true class", loc="center left", bbox_to_anchor=(1.01, 0.5), markerscale=2.5,
                       frameon=False)
    fig.tight_layout()
    return fig


def angles(result: dict):
    """Heatmap of the angle matrix, values printed for up to 12 classes."""
    matrix = torch.tensor(result["matrix_deg"])
    classes = result["classes"]
    k = len(classes)
    fig, (ax,) = _figure(5.4, 4.6)
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=max(90.0, float(matrix.max())))
    fig.colorbar(image, ax=ax, label="angle (degrees)")
    if k <= 12:
        for i in range(k):
            for j in range(k):
                v = float(matrix[i, j])
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 * float(matrix.max()) else "white")
        ax.set_xticks(range(k), classes)
        ax.set_yticks(range(k), classes)
    ax.set_xlabel("class")
    ax.set_ylabel("class")
    ax.set_title(f"Angles between {result['vectors']} (min {result['min_deg']:.1f}°)")
    fig.tight_layout()
    return fig


def geometry(result: dict):
    """Per-class compactness, clean and adversarial side by side, the scores in the title."""
    clean, adv = result["clean"], result["adv"]
    classes = [c for c, v in enumerate(clean["compactness_per_class"]) if v is not None]
    x = torch.arange(len(classes), dtype=torch.float64)
    fig, (ax,) = _figure(7, 3.8)
    for offset, side, label, color in ((-0.2, clean, "clean", PALETTE[1]), (0.2, adv, "adversarial", PALETTE[6])):
        ax.bar(x + offset, [side["compactness_per_class"][c] for c in classes], width=0.4, color=color,
               label=f"{label}: C = {side['compactness']:.3g}, F_min = {side['fisher_min']:.2f}, "
                     f"F_mean = {side['fisher_mean']:.2f}")
    ax.set_xticks(x.tolist(), classes)
    ax.set_xlabel("true class")
    ax.set_ylabel("mean distance to class mean\n(feature units)")
    ax.set_title("Intra-class compactness (lower: tighter); F = class-mean separation / C")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    return fig


def stages(result: dict, attack: dict):
    """Relative clean-to-adversarial distance at each stage, the raw distance printed above."""
    names = result["stages"]
    fig, (ax,) = _figure(6.5, 4)
    ax.plot(range(len(names)), result["relative"], marker="o", color=PALETTE[0], label="mean ‖a − a′‖ / mean ‖a‖")
    for i, (rel, raw) in enumerate(zip(result["relative"], result["distance"])):
        ax.annotate(f"{raw:.3g}", (i, rel), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_ylim(0, 1.25 * max(result["relative"] + [1e-12]))  # from 0, with room for the labels
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_xlabel("stage (input → output); point labels: mean ‖a − a′‖ in the stage's units")
    ax.set_ylabel("relative distance (ratio)")
    ax.set_title(f"Clean-to-adversarial distance per stage\n({attack_text(attack)})")
    ax.legend(loc="lower left", frameon=True)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def stages_compare(results: dict[str, dict]):
    """The relative per-stage distance of several runs on one chart (stages by position, so
    runs of one architecture line up)."""
    fig, (ax,) = _figure(7, 4.2)
    longest = max(results.values(), key=lambda r: len(r["stages"]))["stages"]
    top = 1e-12
    for (run, r), color, marker in zip(results.items(), colors(len(results), RUN_PALETTE), "osD^v<>ph*" * 10):
        ax.plot(range(len(r["stages"])), r["relative"], marker=marker, color=color, label=run)
        top = max(top, *r["relative"])
    ax.set_ylim(0, 1.15 * top)
    ax.set_xticks(range(len(longest)), longest, rotation=25, ha="right")
    ax.set_xlabel("stage (input → output)")
    ax.set_ylabel("mean ‖a − a′‖ / mean ‖a‖ (ratio)")
    ax.set_title("Clean-to-adversarial distance per stage\n(lower: the attack moves the representation less)")
    ax.grid(alpha=0.3)
    ax.legend(title="run", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def eps_curves(curves: dict[str, dict], norm: str):
    """Robust accuracy against eps, one line per run; ``curves[run] = {"eps", "acc", "source"}``."""
    fig, (ax,) = _figure(6.5, 4)
    for (run, c), color in zip(curves.items(), colors(len(curves), RUN_PALETTE)):
        ax.plot(c["eps"], [100 * a for a in c["acc"]], marker="o", color=color, label=f"{run} ({c['source']})")
    ax.set_xlabel(f"{norm} eps (input scale [0, 1])")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Robust accuracy against eps (PGD)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    fig.tight_layout()
    return fig


def training_curves(histories: dict[str, list[dict]]):
    """Training loss (left) and validation clean / robust accuracy (right) per epoch."""
    fig, (left, right) = _figure(11, 4, 2)
    for (run, rows), color in zip(histories.items(), colors(len(histories), RUN_PALETTE)):
        epochs = [r["epoch"] for r in rows]
        left.plot(epochs, [r.get("loss") for r in rows], marker="o", color=color, label=run)
        val = [r for r in rows if "val_clean" in r]
        right.plot([r["epoch"] for r in val], [100 * r["val_clean"] for r in val], marker="o", color=color,
                   label=f"{run}: clean")
        right.plot([r["epoch"] for r in val], [100 * r["val_robust"] for r in val], marker="s", ls="--",
                   color=color, label=f"{run}: robust (PGD)")
    left.set_title("Training loss")
    left.set_ylabel("loss (method's objective, nats)")
    right.set_title("Validation accuracy")
    right.set_ylabel("accuracy (%)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False, ncol=2)
    fig.tight_layout()
    return fig
