"""advrep's TRADES training step against the TRADES authors' own, alternately in one process.

The authors' side is their code, unmodified: ``trades_loss`` from their ``trades.py`` and their
``SmallCNN`` (``models/small_cnn.py`` of github.com/yaodongyu/TRADES), run as their
``train_trades_mnist.py`` runs it (batch 128, SGD lr 0.01 momentum 0.9, eps 0.3, step 0.01,
40 steps, beta 1; a DataLoader over the MNIST tensors). Nothing is fetched: point ``--ref`` at a
folder holding a local copy of those two files (never commit it)::

    git clone https://github.com/yaodongyu/TRADES /tmp/TRADES
    mkdir -p /tmp/trades-ref && cp /tmp/TRADES/trades.py /tmp/TRADES/models/small_cnn.py /tmp/trades-ref/

advrep's side is ``advrep train``'s loop (``Trainer.train_epoch``) with the TRADES MNIST recipe
(``configs/trades-mnist-small-cnn.yaml``) and the precision, layout and compile settings given
(by default what ``train.amp=auto`` and ``train.channels_last=auto`` pick on this device).

Both train on the same real MNIST images, ``--batches`` batches of 128 per round; the rounds
alternate (authors, advrep, authors, ...) so that a busy machine slows both alike; the figure
of each side is its median over the rounds after the first (warm-up, compilation).

    PYTHONPATH=src python benchmarks/trades_vs_authors.py --ref /tmp/trades-ref \\
        --data-dir ../shared/data/mnist --rounds 4 --batches 4
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "trades-mnist-small-cnn.yaml"


def load_module(path: Path, name: str):
    if not path.is_file():
        sys.exit(f"{path} is missing: --ref must hold the authors' trades.py and small_cnn.py (see --help)")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class OnDevice:
    """Their code calls ``.cuda()`` for its random start; on another device that call moves the
    tensor to the benchmark's device instead (the one change to how their code runs)."""

    def __init__(self, device: torch.device):
        self.device, self.real = device, torch.Tensor.cuda

    def __enter__(self):
        if self.device.type != "cuda":
            torch.Tensor.cuda = lambda t, *a, **k: t.to(self.device)

    def __exit__(self, *exc):
        torch.Tensor.cuda = self.real


def authors_side(ref: Path, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    trades = load_module(ref / "trades.py", "authors_trades")
    small_cnn = load_module(ref / "small_cnn.py", "authors_small_cnn")
    torch.manual_seed(1)
    model = small_cnn.SmallCNN().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.float().div(255), y), batch_size=128,
                                         shuffle=True, pin_memory=device.type == "cuda")

    def epoch() -> int:  # their train(): one optimizer step per batch
        model.train()
        n = 0
        with OnDevice(device):
            for data, target in loader:
                data, target = data.to(device), target.to(device)
                optimizer.zero_grad()
                loss = trades.trades_loss(model=model, x_natural=data, y=target, optimizer=optimizer,
                                          step_size=0.01, epsilon=0.3, perturb_steps=40, beta=1.0)
                loss.backward()
                optimizer.step()
                n += len(data)
        return n

    return epoch


def advrep_side(data_dir: Path, images: int, device: str, amp: str, channels_last: str, compile_mode: str,
                out: Path):
    from advrep import config
    from advrep.trainer import Trainer

    cfg = config.load(str(RECIPE), [f"--data.data_dir={data_dir}", f"--data.train_subset={images}",
                                    "--data.val_size=0", f"--device={device}", f"--train.amp={amp}",
                                    f"--train.channels_last={channels_last}", f"--train.compile={compile_mode}",
                                    "--eval.after_train=false"])
    trainer = Trainer(cfg, out / "run", progress=False, log=lambda *_: None)
    state = {"epoch": 0}

    def epoch() -> int:
        trainer.train_epoch(state["epoch"])
        state["epoch"] += 1
        return len(trainer.loader.x)

    return epoch, trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", type=Path, required=True, help="folder with the authors' trades.py and small_cnn.py")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist",
                   help="MNIST in advrep's npz layout (train.npz)")
    p.add_argument("--rounds", type=int, default=4, help="alternating rounds per side; the first is warm-up")
    p.add_argument("--batches", type=int, default=4, help="batches of 128 per round")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--compile", default="off", choices=["off", "default", "reduce-overhead", "max-autotune"])
    args = p.parse_args(argv)
    if args.rounds < 2 or args.batches < 1:
        sys.exit("--rounds must be at least 2 (the first is warm-up) and --batches at least 1")
    device = torch.device(args.device)
    images = 128 * args.batches
    train = np.load(args.data_dir / "train.npz")
    x = torch.from_numpy(train["x"][:images]).unsqueeze(1)  # uint8 (N, 1, 28, 28)
    y = torch.from_numpy(train["y"][:images]).long()
    authors = authors_side(args.ref, x, y, device)
    with tempfile.TemporaryDirectory() as tmp:
        ours, trainer = advrep_side(args.data_dir, images, args.device, args.amp, args.channels_last,
                                    args.compile, Path(tmp))
        rates = {"authors": [], "advrep": []}
        for r in range(args.rounds):
            for name, fn in (("authors", authors), ("advrep", ours)):
                t0 = time.perf_counter()
                n = fn()
                rates[name].append(n / (time.perf_counter() - t0))
                print(f"round {r + 1}: {name:<8}{rates[name][-1]:8.1f} images/s", flush=True)
        amp = "fp32" if trainer.amp_dtype is None else "bf16"
        layout = "channels_last" if trainer.channels_last else "NCHW"
    a, b = statistics.median(rates["authors"][1:]), statistics.median(rates["advrep"][1:])
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; advrep: {amp}, "
          f"{layout}, compile {args.compile}; {args.rounds - 1} timed rounds of {images} images")
    print(f"authors' trades_loss step: {a:.1f} images/s")
    print(f"advrep train (TRADES recipe): {b:.1f} images/s")
    print(f"ratio: {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
