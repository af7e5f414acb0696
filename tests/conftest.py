"""Shared fixtures: the real datasets, and small real-data models trained once per session."""

import os
from pathlib import Path

import pytest
import torch

from advrep.cli import main

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADVREP_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(min(4, os.cpu_count() or 1))


def shared_folder(name: str) -> Path:
    """The real dataset ``name`` (npz layout) beside the repository; a missing copy fails loudly."""
    folder = SHARED / name
    if not folder.is_dir():
        pytest.fail(f"shared data folder {folder} is missing: set ADVREP_SHARED_DATA to the folder "
                    "that holds cifar10/ and mnist/ (see shared/data/README.md)")
    return folder


@pytest.fixture(scope="session")
def shared():
    return shared_folder


QUICKSTART = str(ROOT / "configs" / "quickstart-mnist.yaml")
# The same budget for both session models: the quickstart recipe (2 epochs, 5-step PGD in
# training) on 20,000 training images; PGD-20 (eps 0.3, step 0.03) on the first 1,000 test images.
BUDGET = ["--data.train_subset=20000", "--eval.n=1000", "--eval.attacks=[pgd]", "--eval.pgd_steps=20",
          "--eval.pgd_step_size=0.03", "--eval.checks=false", "--eval.corruptions=none"]


def train(*args) -> int:
    """``advrep train --quiet --config <quickstart>`` with ``args``, in this process."""
    return main(["train", "--quiet", "--config", QUICKSTART, *map(str, args)])


@pytest.fixture(scope="session")
def mnist_runs(tmp_path_factory, shared):
    """Run directories of small-cnn trained on real MNIST with `standard` and `pgd-at`,
    same budget, evaluated with PGD-20 on 1,000 test images; trained once per session."""
    root = tmp_path_factory.mktemp("mnist-runs")
    runs = {}
    for method in ("standard", "pgd-at"):
        out = root / method
        assert train("--data-dir", shared("mnist"), "--out", out, f"--method={method}", *BUDGET) == 0
        runs[method] = out
    return runs


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory, shared):
    """96 training and 24 test images of real MNIST in the npz layout: a run takes a second."""
    import numpy as np

    folder = tmp_path_factory.mktemp("tiny-mnist")
    train, test = np.load(shared("mnist") / "train.npz"), np.load(shared("mnist") / "test.npz")
    np.savez(folder / "train.npz", x=train["x"][:96], y=train["y"][:96])
    np.savez(folder / "test.npz", x=test["x"][:24], y=test["y"][:24])
    return folder


def tiny_command(data: Path, out: Path, *extra) -> list[str]:
    """``advrep train`` of the quickstart recipe on :func:`tiny_mnist`: 3 epochs of 1-step PGD."""
    return ["train", "--quiet", "--config", QUICKSTART, "--data-dir", str(data), "--out", str(out),
            "--data.val_size=16", "--train.epochs=3", "--train.batch_size=32", "--threat.steps=1",
            "--train.val_steps=1", "--eval.n=16", "--eval.attacks=[fgsm]", "--eval.checks=false",
            "--eval.corruptions=none", "--eval.pgd_steps=1", *map(str, extra)]


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory):
    """Downloads and cached surrogates go to a session folder, never the user's cache."""
    os.environ["ADVREP_DATA"] = str(tmp_path_factory.mktemp("advrep-cache"))
