"""Data-parallel training and evaluation (advrep.distributed) with 2 CPU processes over gloo.

The end-to-end tests launch ``torchrun --nproc_per_node=2`` on this file, whose ``__main__``
registers a tiny BatchNorm CNN (no dropout) and runs advrep's CLI, and compare with the same
command in one process: the weights after training with global batch B, a resumed run, and
the evaluation report.

The test network computes in float64 (its input arrives in float32, as always). Both runs
compute the same function, but a batch split over ranks is summed in another order, and in
float32 that rounding difference (about 1e-7) is amplified by sign(∇) in the attack: TRADES'
KL attack starts 0.001 from x, where its gradient is nearly zero, so after a few steps a few
pixels of x_adv differ by a step size and the runs drift apart (as they would between two GPU
models). In float64 the rounding is 1e-16 and the comparison is exact to 1e-10. SGD, not
Adam: Adam's first step turns rounding noise in near-zero gradients into full-size updates.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from torch import nn

from advrep import distributed
from advrep.data.loader import DeviceLoader

HERE = Path(__file__).resolve()
QUICKSTART = HERE.parents[1] / "configs" / "quickstart-mnist.yaml"
# 28 training images in global batches of 8: three full batches and a last one of 4 (2 per rank)
TRAIN = ["--model.arch=bn-cnn", "--data.train_subset=28", "--data.val_size=12", "--train.batch_size=8",
         "--train.epochs=3", "--train.optimizer=sgd", "--train.lr=0.05", "--train.eps_warmup_epochs=0",
         "--threat.steps=3", "--threat.step_size=0.15", "--train.val_steps=3", "--eval.after_train=false",
         "--device=cpu"]
TOL = dict(rtol=1e-10, atol=1e-10)


def advrep(*args, ranks: int = 1) -> str:
    """``advrep ARGS`` through this file, in one process or under torchrun with ``ranks``."""
    launcher = [sys.executable] if ranks == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    proc = subprocess.run([*launcher, str(HERE), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def train(out: Path, data: Path, *extra, ranks: int = 1) -> Path:
    advrep("train", "--quiet", "--config", QUICKSTART, "--data-dir", data, "--out", out, *TRAIN, *extra, ranks=ranks)
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last.safetensors"))


def rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared):
    """Run directories, trained on first use: (method, ranks) -> run."""
    root, made = tmp_path_factory.mktemp("ddp"), {}

    def get(method: str, ranks: int) -> Path:
        if (method, ranks) not in made:
            made[method, ranks] = train(root / f"{method}-{ranks}", shared("mnist"), f"--method={method}", ranks=ranks)
        return made[method, ranks]

    return get


@pytest.mark.parametrize("method", ["pgd-at", "trades"])
@pytest.mark.slow
def test_two_ranks_end_with_the_weights_of_one_process_with_the_global_batch(runs, method):
    one, two = runs(method, 1), runs(method, 2)
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys() and any("running_var" in k for k in a)  # BatchNorm, synchronized
    for key in a:
        torch.testing.assert_close(b[key], a[key], **TOL, msg=f"{method}: {key} differs")
    # rank 0's log: the same per-epoch means over the global batches and the same validation
    r1, r2 = rows(one), rows(two)
    assert [r["epoch"] for r in r2] == [1, 2, 3]
    for x, y in zip(r1, r2):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert (x["val_clean"], x["val_robust"]) == (y["val_clean"], y["val_robust"])


@pytest.mark.slow
def test_a_distributed_run_resumes_to_the_weights_of_an_uninterrupted_one(runs, shared, tmp_path):
    part = train(tmp_path / "part", shared("mnist"), "--method=trades", "--train.stop_after=1", ranks=2)
    assert [r["epoch"] for r in rows(part)] == [1]
    after_one = weights(part)
    advrep("train", "--quiet", "--resume", part, "--data-dir", shared("mnist"), "--train.stop_after=null", ranks=2)
    whole = runs("trades", 2)
    assert [r["epoch"] for r in rows(part)] == [1, 2, 3]
    a, b = weights(part), weights(whole)
    # epochs 2-3 moved the weights far beyond the tolerance, so matching them is no accident
    assert max((after_one[k] - a[k]).abs().max().item() for k in a if a[k].is_floating_point()) > 1e-2
    for key in a:
        torch.testing.assert_close(a[key], b[key], **TOL, msg=f"{key} differs after resume")
    assert json.loads((part / "last.json").read_text())["epoch"] == 3


@pytest.mark.slow
def test_a_distributed_evaluation_gives_the_report_of_one_process(runs, shared, tmp_path):
    run = runs("pgd-at", 1)
    # 39 images in batches of 12: the last batch of 3 splits 1 / 2 over the ranks
    # (--eval.n=, not --n: torchrun reads --n as an abbreviation of its own --nnodes, --nproc...)
    args = ["eval", run, "--quiet", "--eval.checkpoint=last", "--eval.n=39", "--data-dir", shared("mnist"),
            "--eval.batch_size=12", "--eval.attacks=[fgsm,pgd,cw,mt]", "--eval.pgd_steps=5", "--eval.cw_steps=5",
            "--eval.pgd_step_size=0.1", "--eval.eps_sweep=[0.1,0.2]", "--eval.readouts=[feature_shift]",
            "--eval.checks=false", "--eval.corruptions=generated"]
    advrep(*args, "--out", tmp_path / "one")
    printed = advrep(*args, "--out", tmp_path / "two", ranks=2)
    assert printed.count("report in") == 1  # rank 0 alone prints (and writes)
    one, two = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("one", "two"))
    for r in (one, two):
        del r["time_s"]
    # wall times differ, and under torchrun the counted passes are rank 0's share (docs/evaluation.md)
    costs = [r.pop("cost") for r in (one, two)]
    assert costs[1]["expected"] == costs[0]["expected"] and 0 < costs[1]["forward"] < costs[0]["forward"]
    assert one["n"] == two["n"] == 39 and set(one["attacks"]) == {"clean", "fgsm", "pgd", "cw", "mt", "worst_case"}
    assert 0 < one["attacks"]["fgsm"]["correct"] < one["attacks"]["clean"]["correct"]  # not all-or-nothing
    assert "eps_sweep" in one and "corruptions" in one and "feature_shift" in one["readouts"]
    assert two == one


# ----------------------------------------------------------------------------- the pieces


def test_shard_splits_a_range_contiguously(monkeypatch):
    monkeypatch.setattr(distributed.group, "world", lambda: 2)
    shards = []
    for r in (0, 1):
        monkeypatch.setattr(distributed.group, "rank", lambda r=r: r)
        shards.append(distributed.shard(5))
    assert shards == [(0, 2), (2, 5)]


def test_sharded_loader_gives_each_rank_its_slice_and_trims_the_last_batch(monkeypatch):
    x = torch.arange(21, dtype=torch.uint8).view(21, 1, 1, 1).expand(21, 1, 2, 2).contiguous()
    y = torch.arange(21)
    whole = [yb for _, yb in DeviceLoader(x, y, 8, shuffle=True, seed=3)]  # 8, 8, 5 images
    monkeypatch.setattr(distributed.group, "world", lambda: 2)
    parts = []
    for r in (0, 1):
        monkeypatch.setattr(distributed.group, "rank", lambda r=r: r)
        loader = distributed.ShardedLoader(x, y, 8, shuffle=True, seed=3)
        assert len(loader) == 3
        parts.append([yb for _, yb in loader])
    assert [len(b) for b in parts[0]] == [4, 4, 2] == [len(b) for b in parts[1]]
    for k in range(3):  # rank 0 then rank 1 = the global batch (the last one trimmed from 5 to 4)
        assert torch.equal(torch.cat([parts[0][k], parts[1][k]]), whole[k][:8 if k < 2 else 4])


def test_global_draws_give_a_rank_the_rows_one_process_draws(monkeypatch):
    def draws():
        x = torch.zeros(6, 1, 2, 2)
        return [torch.empty_like(x).uniform_(-1, 1), torch.randn_like(x), torch.rand(6), torch.randn(6, 3)]

    torch.manual_seed(5)
    ref = draws()
    monkeypatch.setattr(distributed.group, "world", lambda: 2)
    for lo, hi in ((0, 2), (2, 6)):  # unequal shards, as in an evaluation batch
        torch.manual_seed(5)
        with distributed.global_draws(lo, hi, 6):
            x = torch.zeros(hi - lo, 1, 2, 2)
            got = [torch.empty_like(x).uniform_(-1, 1), torch.randn_like(x), torch.rand(hi - lo),
                   torch.randn(hi - lo, 3)]
            unrelated = torch.rand(7)  # a draw that is not per sample is left alone
        for g, r in zip(got, ref):
            assert torch.equal(g, r[lo:hi])
        assert unrelated.shape == (7,)


def _collectives(rank: int, port: int, out: str) -> None:
    """One rank of the process-group test (module level: torch.multiprocessing pickles it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    distributed.setup(torch.device("cpu"))
    x, w, _ = _bn_case()
    lo, hi = (0, 2) if rank == 0 else (2, 5)  # unequal shards: the statistics weight them by count
    bn = distributed.sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3).double()), torch.device("cpu"))[0]
    xs = x[lo:hi].clone().requires_grad_()
    normalized = bn(xs)
    (normalized * w[lo:hi]).sum().backward()
    result = {"out": distributed.gather_cat(normalized.detach()), "grad_x": distributed.gather_cat(xs.grad),
              "grad_weight": distributed.reduce(bn.weight.grad), "grad_bias": distributed.reduce(bn.bias.grad),
              "running_mean": bn.running_mean, "running_var": bn.running_var,
              "mask": distributed.gather_cat(torch.tensor([True, False, rank == 1][:hi - lo])),
              "min": distributed.reduce(torch.tensor(float(rank + 3)), "min"),
              "means": distributed.mean_over_ranks({"a": torch.tensor(float(rank)), "b": torch.tensor(2.0)})}
    if rank == 0:
        torch.save(result, out)
    distributed.cleanup()


def _bn_case():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64) * 3 + 1,
            torch.randn(5, 3, 2, 2, generator=g, dtype=torch.float64), g)


@pytest.mark.slow
def test_sync_batchnorm_and_gathers_over_two_processes_match_one(tmp_path):
    x, w, _ = _bn_case()
    bn = nn.BatchNorm2d(3).double().train()
    x.requires_grad_()
    out = bn(x)
    (out * w).sum().backward()
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_collectives, args=(port, str(tmp_path / "r.pt")), nprocs=2)
    got = torch.load(tmp_path / "r.pt")
    # the statistics of all 5 samples: the same output, gradients and running statistics
    torch.testing.assert_close(got["out"], out.detach())
    torch.testing.assert_close(got["grad_x"], x.grad)
    torch.testing.assert_close(got["grad_weight"], bn.weight.grad)
    torch.testing.assert_close(got["grad_bias"], bn.bias.grad)
    mean, var = x.detach().mean((0, 2, 3)), x.detach().var((0, 2, 3), unbiased=True)  # by hand, momentum 0.1
    torch.testing.assert_close(got["running_mean"], 0.1 * mean)
    torch.testing.assert_close(got["running_var"], 0.9 + 0.1 * var)
    assert got["mask"].tolist() == [True, False, True, False, True]
    assert got["min"].item() == 3.0 and got["means"]["a"].item() == 0.5 and got["means"]["b"].item() == 2.0


if __name__ == "__main__":  # the entry point the tests launch (with or without torchrun)
    from advrep.cli import main
    from advrep.models import MODELS, Classifier
    from advrep.models.heads import build_head

    @MODELS.register("bn-cnn")
    class BNCNN(Classifier):
        """Two conv-BatchNorm-ReLU stages and a linear head: small, with BatchNorm, no dropout."""

        head_path = "fc"

        def __init__(self, num_classes=10, head="linear", in_channels=1, image_size=28, normalization=None, **kw):
            super().__init__(num_classes, in_channels, normalization)
            self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 5, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.feature_dim = 16
            self.fc = build_head(head, 16, num_classes, **kw)
            self.double()  # see the module docstring

        def features(self, x):
            return self.body(x.double())

    sys.exit(main(sys.argv[1:]))
