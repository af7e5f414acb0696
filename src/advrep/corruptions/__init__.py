"""Common corruptions: the official CIFAR-10-C / CIFAR-100-C files, or advrep's generated set.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
Perturbations", ICLR 2019 (https://github.com/hendrycks/robustness). The threat model is not
adversarial: a fixed corruption at severity 1..5, and the score is plain accuracy.

- :func:`load_official` reads the published files (``<corruption>.npy``: the test set at
  severities 1..5 stacked in order, uint8 (5N, H, W, C); ``labels.npy``: (5N,)).
- :func:`generate` applies advrep's re-implementation of the reference ``make_cifar_c.py``,
  batched on the images' device, with its CIFAR severity parameters: the 15 benchmark
  corruptions (frost as ``frost_like``, a procedural texture in place of the reference's
  photographs) and 3 held-out extras. These are **not** the official CIFAR-10-C images (other
  random draws, the frost substitute, re-implemented ImageMagick/OpenCV steps): numbers are
  comparable across advrep runs, not to published CIFAR-10-C or RobustBench figures, and
  :func:`evaluate` marks them ``"source": "generated"``.
- :func:`evaluate` reports accuracy per corruption and severity, the mean over the 15 benchmark
  corruptions and, apart, over the held-out ones; :func:`report_keys` gives a run report's
  ``corruptions_acc`` (official files only, RobustBench's number) or
  ``corruptions_generated_acc``.

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

from .blur import clipped_zoom, disk_kernel, gaussian_kernel, motion_blur, motion_kernel, zoom_matrix
from .colour import hsv_to_rgb, rgb_to_hsv
from .digital import box_matrix
from .evaluate import evaluate, headline, report_keys
from .jpeg import jpeg, quantization_table
from .official import BENCHMARK, HELD_OUT, load_official
from .table import (CORRUPTIONS, EXTRAS, FIDELITIES, GENERATED, GENERATED_BENCHMARK, GENERATED_NOTE, SEVERITIES,
                    Corruption, available, generate)
from .weather import ice_texture, plasma_fractal

__all__ = ["SEVERITIES", "BENCHMARK", "HELD_OUT", "GENERATED", "GENERATED_BENCHMARK", "EXTRAS", "FIDELITIES",
           "CORRUPTIONS", "Corruption", "GENERATED_NOTE", "available", "generate", "load_official", "evaluate",
           "report_keys", "headline", "rgb_to_hsv", "hsv_to_rgb", "gaussian_kernel", "disk_kernel", "motion_kernel",
           "motion_blur", "zoom_matrix", "clipped_zoom", "box_matrix", "jpeg", "quantization_table", "plasma_fractal",
           "ice_texture"]
