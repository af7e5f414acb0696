"""Shared fixtures: the real datasets, and small real-data models trained once per session.

The real datasets are read from the shared data folder beside the repository
(``$ADVREP_SHARED_DATA``, default ``../shared/data``), in the npz layout of its README. Where a
dataset's folder is missing (a fresh machine), its official files are downloaded once with
advrep's own checksummed downloader (``$ADVREP_MIRROR`` for another source) into the data
cache as it was when the session started (``$ADVREP_DATA`` or ``~/.cache/advrep``, where
``advrep train`` would put them too) and written beside them in the same npz layout.
"""

import os
from pathlib import Path

# OpenMP's idle threads sleep instead of spinning: on 2 cores shared with other work, spinning
# made the tests 4 (real-data training) to 10 times (tiny tensors) slower. Read when torch
# loads, so it is set before the first import of torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from advrep import data  # noqa: E402
from advrep.cli import main  # noqa: E402
from advrep.errors import DataError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADVREP_SHARED_DATA", ROOT.parent / "shared" / "data"))
USER_CACHE = data.cache_dir()  # read before _private_data_cache points ADVREP_DATA at a session folder
# Seconds for a test that neither reads real data nor is marked slow; the others have the
# `timeout` of pyproject's [tool.pytest.ini_options], which covers a first download too.
FAST_TIMEOUT = 120

torch.set_num_threads(min(4, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.hasplugin("timeout"):  # pytest-timeout: the `test` extra
        return
    for item in items:
        if not any(item.iter_markers("slow")) and not any(item.iter_markers("timeout")) \
                and "shared" not in item.fixturenames:
            item.add_marker(pytest.mark.timeout(FAST_TIMEOUT))


_downloaded: dict[str, Path | str] = {}


def shared_folder(name: str) -> Path:
    """The real dataset ``name`` in the npz layout: the shared copy, else one made from the
    official files (downloaded once); with neither, the test fails with one line saying why."""
    folder = SHARED / name
    if folder.is_dir():
        return folder
    if name not in _downloaded:
        _downloaded[name] = _download(name)
    if isinstance(_downloaded[name], str):
        pytest.fail(_downloaded[name], pytrace=False)
    return _downloaded[name]


# The shared folder keeps CIFAR-10's train split as its five official batches (train-1 ... train-5).
TRAIN_FILES = {"cifar10": 5}


def _download(name: str) -> Path | str:
    """``USER_CACHE/shared/<name>`` in the shared folder's layout, written once from the official
    files that advrep's downloader fetched and checked; or the one-line reason it cannot be."""
    folder = USER_CACHE / "shared" / name
    if folder.is_dir():
        return folder
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("ADVREP_DATA", str(USER_CACHE))
            splits = data.load(name, progress=False)
    except DataError as e:
        return (f"{SHARED / name} is missing and {name} could not be downloaded; put the {name} folder "
                f"(npz layout, see shared/data/README.md) in {SHARED}, or set ADVREP_SHARED_DATA to the "
                f"folder that holds {name}/ ({e})")
    part = folder.with_name(name + ".part")
    part.mkdir(parents=True, exist_ok=True)

    def save(file: str, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.permute(0, 2, 3, 1)  # NHWC, and NHW for one channel, as the shared files are
        np.savez_compressed(part / file, x=(x[..., 0] if x.shape[-1] == 1 else x).numpy(), y=y.numpy())

    chunks = TRAIN_FILES.get(name, 1)
    for i, (x, y) in enumerate(zip(splits.x_train.chunk(chunks), splits.y_train.chunk(chunks)), 1):
        save(f"train-{i}.npz" if chunks > 1 else "train.npz", x, y)
    save("test.npz", splits.x_test, splits.y_test)
    part.rename(folder)  # complete or absent: an interrupted session leaves only the .part folder
    return folder


@pytest.fixture(scope="session")
def shared():
    return shared_folder


QUICKSTART = str(ROOT / "configs" / "quickstart-mnist.yaml")
# The same budget for both session models: the quickstart recipe (2 epochs, 5-step PGD in
# training) on 10,000 training images (half the results pages' budget, to keep CI short), 500 held out for
# the best-checkpoint choice; PGD-20 (eps 0.3, step 0.03) on the first 500 test images.
BUDGET = ["--data.train_subset=10000", "--data.val_size=500", "--eval.n=500", "--eval.attacks=[pgd]", "--eval.pgd_steps=20",
          "--eval.pgd_step_size=0.03", "--eval.checks=false", "--eval.corruptions=none"]


def train(*args) -> int:
    """``advrep train --quiet --config <quickstart>`` with ``args``, in this process."""
    return main(["train", "--quiet", "--config", QUICKSTART, *map(str, args)])


@pytest.fixture(scope="session")
def mnist_runs(tmp_path_factory, shared):
    """Run directories of small-cnn trained on real MNIST with `standard` and `pgd-at`,
    same budget, evaluated with PGD-20 on 500 test images; trained once per session (minutes:
    the tests that use it are marked slow)."""
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
    """Downloads and cached surrogates of the tests go to a session folder, never the user's
    cache (only the real datasets a machine lacks are fetched into it, by shared_folder)."""
    os.environ["ADVREP_DATA"] = str(tmp_path_factory.mktemp("advrep-cache"))


def assert_same_run(full: Path, part: Path, names=("last.safetensors", "last.optim.safetensors")) -> None:
    """An interrupted-then-resumed run (``part``) ends as the uninterrupted one (``full``): the
    tensors of ``names`` bit for bit, and the same metrics rows (their wall times aside)."""
    import json

    import torch
    from safetensors.torch import load_file

    for name in names:
        a, b = load_file(str(full / name)), load_file(str(part / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs after resume"

    def rows(run):
        return [{k: v for k, v in json.loads(r).items() if k != "train_time_s"}
                for r in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(full) == rows(part)
