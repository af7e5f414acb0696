"""Common corruptions: the official CIFAR-10-C / CIFAR-100-C files, or advrep's generated set.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (https://github.com/hendrycks/robustness). The threat model is not
adversarial: a fixed corruption at severity 1..5, and the score is plain accuracy.

- :func:`load_official` reads the published files (``<corruption>.npy``: the test set at
  severities 1..5 stacked in order, uint8 (5N, H, W, C); ``labels.npy``: (5N,)).
- :func:`generate` applies advrep's re-implementation of the corruptions that need no external
  tool, batched on the images' device, with the severity parameters of the reference
  ``make_cifar_c.py``. These are **not** the official CIFAR-10-C images (other RNG, advrep's own
  JPEG codec, resampling and fog): numbers are comparable across advrep runs, not to published
  CIFAR-10-C figures, and :func:`evaluate` marks them ``"source": "generated"``.
- :func:`evaluate` reports accuracy per corruption and severity, per severity, and the mean.

Example::

    import torch
    from advrep import corruptions, models
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    g = torch.Generator().manual_seed(0)
    x_c = corruptions.generate(x.float() / 255, "jpeg_compression", 3, generator=g)
    model = models.create("small-cnn", num_classes=10, head="linear", in_channels=3, image_size=32)
    report = corruptions.evaluate(model, x, y, device="cpu")  # generated: every corruption, severities 1-5
    # official files: corruptions.evaluate(model, x_test, y_test, device="cuda", directory="CIFAR-10-C")
"""

from __future__ import annotations

from .blur import disk_kernel, gaussian_kernel
from .colour import hsv_to_rgb, rgb_to_hsv
from .digital import box_matrix
from .evaluate import evaluate
from .jpeg import jpeg, quantization_table
from .official import load_official
from .table import GENERATED, GENERATED_NOTE, SEVERITIES, available, generate

__all__ = ["SEVERITIES", "GENERATED", "GENERATED_NOTE", "available", "generate", "load_official", "evaluate",
           "rgb_to_hsv", "hsv_to_rgb", "gaussian_kernel", "disk_kernel", "box_matrix", "jpeg", "quantization_table"]
