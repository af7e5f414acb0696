"""Weight EMA (advrep.ema), adversarial weight perturbation (advrep.awp) and their place in the
trainer, the checkpoints, resume, `advrep eval` and the Python API.

The AWP test writes the authors' procedure (csdongxian/AWP: a proxy network, one SGD step on the
negated loss, the layer-wise rescaled difference, perturb, loss, optimizer step, restore) out step
by step on a tiny float64 network and compares advrep's step with it.
"""

import copy
from pathlib import Path
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import advrep
from advrep import awp, checkpoint, config
from advrep.cli import main
from advrep.ema import WeightEMA, decay_at
from advrep.errors import CheckpointError, ConfigError
from advrep.trainer import outer_step
from conftest import assert_same_run, tiny_command


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                               torch.nn.Linear(6, 3)).double()


# ------------------------------------------------------------------------ EMA arithmetic


def test_ema_update_by_hand_and_batchnorm_buffers_copied():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.BatchNorm1d(1)).double()
    with torch.no_grad():
        net[0].weight.fill_(1.0), net[0].bias.fill_(-2.0)
    ema = WeightEMA(net, decay=0.75)
    with torch.no_grad():
        net[0].weight.fill_(5.0), net[0].bias.fill_(2.0)
        net[1].running_mean.fill_(7.0)
    ema.update(net, step=1)  # 0.75·1 + 0.25·5 = 2; 0.75·(−2) + 0.25·2 = −1
    state = ema.state_dict(net)
    assert state["0.weight"].item() == 2.0 and state["0.bias"].item() == -1.0
    with torch.no_grad():
        net[0].weight.fill_(6.0)
    ema.update(net, step=2)  # 0.75·2 + 0.25·6 = 3
    state = ema.state_dict(net)
    assert state["0.weight"].item() == 3.0
    assert state["1.running_mean"].item() == 7.0, "BatchNorm buffers are the raw network's (copied)"
    net[1].num_batches_tracked.fill_(4)
    assert ema.state_dict(net)["1.num_batches_tracked"].item() == 4
    assert net[0].weight.item() == 6.0, "the update leaves the network alone"


def test_ema_warmup_of_the_decay():
    assert decay_at(0.999, 1, warmup=True) == pytest.approx(2 / 11)
    assert decay_at(0.999, 90, warmup=True) == pytest.approx(91 / 100)
    assert decay_at(0.9, 90, warmup=True) == 0.9 and decay_at(0.999, 1, warmup=False) == 0.999
    net = torch.nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = WeightEMA(net, decay=0.999, warmup=True)
    with torch.no_grad():
        net.weight.fill_(11.0)
    ema.update(net, step=1)  # d = 2/11: (2/11)·0 + (9/11)·11 = 9
    assert ema.params[0].item() == pytest.approx(9.0, abs=1e-12)


def test_swapped_runs_the_ema_weights_and_restores_the_raw_ones_exactly():
    net = tiny_net()
    ema = WeightEMA(net, decay=0.5)
    raw = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=1)
    after = copy.deepcopy(net.state_dict())
    with ema.swapped(net):
        for name, p in net.named_parameters():
            assert torch.equal(p, raw[name] + 0.5), name
    for k, v in net.state_dict().items():
        assert torch.equal(v, after[k]), k


# ------------------------------------------------------------------------ checkpoints


def test_checkpoint_holds_both_weight_sets_and_refuses_missing_ema(tmp_path):
    net = tiny_net()
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    ema.update(net, step=1)
    checkpoint.save(tmp_path, "with", net, {"epoch": 1}, ema=ema.state_dict(net))
    checkpoint.save(tmp_path, "without", net, {"epoch": 1})
    raw, meta, _ = checkpoint.load(tmp_path / "with", weights="raw")
    averaged, _, _ = checkpoint.load(tmp_path / "with", weights="ema")
    auto, _, _ = checkpoint.load(tmp_path / "with", weights=None)
    assert meta["weights"] == ["raw", "ema"]
    assert torch.equal(raw["0.weight"], net[0].weight) and torch.equal(averaged["0.weight"], ema.params[0])
    assert torch.equal(auto["0.weight"], averaged["0.weight"]) and not torch.equal(raw["0.weight"], auto["0.weight"])
    assert checkpoint.stem(tmp_path / "with.ema.safetensors") == tmp_path / "with"
    assert torch.equal(checkpoint.load(tmp_path / "without", weights=None)[0]["0.weight"], net[0].weight)
    with pytest.raises(CheckpointError, match="holds no EMA weights.*--eval.weights=raw"):
        checkpoint.load(tmp_path / "without", weights="ema")
    # an EMA file from another write is detected like any other file of a mixed set
    shutil.copy(tmp_path / "with.ema.safetensors", tmp_path / "keep.safetensors")
    checkpoint.save(tmp_path, "with", net, {"epoch": 2}, ema=ema.state_dict(net))
    shutil.copy(tmp_path / "keep.safetensors", tmp_path / "with.ema.safetensors")
    with pytest.raises(CheckpointError, match="does not belong to its sidecar"):
        checkpoint.load(tmp_path / "with", weights="ema")


# ------------------------------------------------------------------------ AWP


def authors_awp_step(model, opt, x, x_adv, y, gamma, loss_of, proxy_loss_of):
    """The authors' procedure (AdvWeightPerturb / TradesAWP and their training loops), written out:
    ``proxy_loss_of(net)`` is the loss their proxy maximizes, ``loss_of(net)`` the training loss."""
    proxy = copy.deepcopy(model)
    proxy.load_state_dict(model.state_dict())
    proxy.train()
    proxy_opt = torch.optim.SGD(proxy.parameters(), lr=0.01)
    proxy_loss = -proxy_loss_of(proxy)
    proxy_opt.zero_grad()
    proxy_loss.backward()
    proxy_opt.step()
    diff = {}
    for (old_k, old_w), (_, new_w) in zip(model.state_dict().items(), proxy.state_dict().items()):
        if len(old_w.size()) <= 1 or "weight" not in old_k:
            continue
        d = new_w - old_w
        diff[old_k] = old_w.norm() / (d.norm() + 1e-20) * d
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                p.add_(gamma * diff[name])
    model.train()
    loss = loss_of(model)
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in diff:
                p.add_(-gamma * diff[name])
    return loss


def _pgd_at_loss(net, x, x_adv, y):
    return F.cross_entropy(net(x_adv), y)


def _trades_loss(net, x, x_adv, y, beta=6.0):
    # the authors' loop and TradesAWP.calc_awp alike: clean, adversarial, clean passes in train mode
    # (advrep's trades runs the second clean pass for BatchNorm's statistics only: the same value)
    loss_natural = F.cross_entropy(net(x), y)
    loss_robust = F.kl_div(F.log_softmax(net(x_adv), dim=1), F.softmax(net(x), dim=1), reduction="batchmean")
    return loss_natural + beta * loss_robust


@pytest.mark.parametrize("name,loss_of,proxy_loss_of,gamma", [
    ("pgd-at", _pgd_at_loss, _pgd_at_loss, 1e-2),  # the authors' gammas
    ("trades", _trades_loss, _trades_loss, 5e-3),
])
def test_one_awp_step_equals_the_authors_procedure(name, loss_of, proxy_loss_of, gamma):
    torch.manual_seed(1)
    x = torch.rand(8, 4, dtype=torch.float64)
    x_adv = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 3, (8,))
    ours, theirs, plain = tiny_net(), tiny_net(), tiny_net()
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for m in (ours, theirs, plain)]
    method = advrep.method(name)
    threat = advrep.Threat("Linf", eps=0.1, step_size=0.05, steps=1)
    for _ in range(2):  # the second step also sees the momentum of the first
        loss, _ = outer_step(method, ours, opts[0], x, x_adv, y, threat, awp_gamma=gamma,
                             awp_names=awp.perturbed_names(ours))
        reference = authors_awp_step(theirs, opts[1], x, x_adv, y, gamma, lambda net: loss_of(net, x, x_adv, y),
                                     lambda net: proxy_loss_of(net, x, x_adv, y))
        outer_step(method, plain, opts[2], x, x_adv, y, threat)
        assert loss.item() == pytest.approx(reference.item(), rel=1e-12)
    for (k, a), b, c in zip(ours.state_dict().items(), theirs.state_dict().values(), plain.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), f"{k} differs from the authors' step"
    assert not torch.allclose(ours[0].weight, plain[0].weight, atol=1e-6), "AWP changed nothing"
    # the state dicts include BatchNorm's buffers: the proxy pass left them as the authors' separate proxy does
    assert ours[1].num_batches_tracked.item() == 2 * (1 if name == "pgd-at" else 3)


def test_awp_perturbs_only_weights_rescaled_to_their_norm_and_leaves_no_trace():
    net = tiny_net()
    assert awp.perturbed_names(net) == ["0.weight", "3.weight"]  # not biases, not BatchNorm's weight (1-d)
    x, y = torch.rand(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    before = copy.deepcopy(net.state_dict())
    v = awp.perturbation(net.eval(), lambda: F.cross_entropy(net(x), y), awp.perturbed_names(net))
    for name, d in v.items():
        assert d.norm().item() == pytest.approx(dict(net.named_parameters())[name].norm().item(), rel=1e-12)
    assert not net.training, "the caller's mode is restored"
    assert all(p.grad is None for p in net.parameters())
    for k, t in net.state_dict().items():
        assert torch.equal(t, before[k]), f"{k} changed"


def test_awp_composes_with_terms_and_is_refused_for_standard():
    torch.manual_seed(2)
    x = torch.rand(8, 4, dtype=torch.float64)
    x_adv, y = (x + 0.05).clamp(0, 1), torch.randint(0, 3, (8,))

    class Net(torch.nn.Module):  # features for the lp term
        def __init__(self):
            super().__init__()
            self.body, self.head = tiny_net()[:3], torch.nn.Linear(6, 3).double()

        def forward_features(self, x):
            h = self.body(x)
            return h, self.head(h)

        def forward(self, x):
            return self.forward_features(x)[1]

    results = []
    for gamma in (0.0, 1e-2):
        torch.manual_seed(3)
        net = Net()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        method = advrep.method("pgd-at+lp")
        outer_step(method, net, opt, x, x_adv, y, None, awp_gamma=gamma, awp_names=awp.perturbed_names(net))
        results.append(net.head.weight.detach().clone())
    assert not torch.allclose(*results), "AWP has an effect on a composed method"
    with pytest.raises(ConfigError, match="awp_gamma.*'standard'.*clean images only"):
        config.load(None, ["--method=standard", "--train.awp_gamma=0.01"])
    assert config.load(None, ["--method=trades", "--train.awp_gamma=0.005", "--train.awp_warmup=10"]).train.awp_warmup == 10
    with pytest.raises(ConfigError, match="train.ema"):
        config.load(None, ["--train.ema=1"])


# ------------------------------------------------------------------------ the trainer


HEAD = "classifier.fc3.weight"  # small-cnn's last layer


def _tensors(path):
    return load_file(str(path))


@pytest.mark.slow
def test_ema_and_awp_run_resume_bit_identically_and_evaluate_the_ema_weights(tiny_mnist, tmp_path, capsys):
    extra = ["--method=trades", "--train.ema=0.9", "--train.ema_warmup=true", "--train.awp_gamma=0.005",
             "--train.awp_warmup=1"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(tiny_command(tiny_mnist, full, *extra)) == 0
    assert "EMA weights)" in capsys.readouterr().out, "the printed table says which weights ran"
    assert main(tiny_command(tiny_mnist, part, *extra, "--train.stop_after=1", "--eval.after_train=false")) == 0
    assert main(["train", "--quiet", "--resume", str(part), "--train.stop_after=2", "--eval.after_train=true"]) == 0
    assert_same_run(full, part, ("last.safetensors", "last.optim.safetensors", "last.ema.safetensors",
                                 "best.ema.safetensors"))
    raw, ema = _tensors(full / "last.safetensors"), _tensors(full / "last.ema.safetensors")
    assert not torch.equal(raw[HEAD], ema[HEAD]), "the EMA is not the raw network"
    report = json.loads((full / "report.json").read_text())
    assert report["weights"] == "ema"
    # advrep eval chooses the set; asking a run without EMA for it is one clear line
    assert main(["eval", str(full), "--quiet", "--out", str(tmp_path / "raw"), "--eval.weights=raw"]) == 0
    assert json.loads((tmp_path / "raw" / "report.json").read_text())["weights"] == "raw"
    # so do advrep analyze and compare (through analysis.load_run)
    assert main(["analyze", str(full), "--quiet", "--n", "16", "--embedding", "pca", "--readouts=[]",
                 "--eval.weights=raw", "--out", str(tmp_path / "analysis")]) == 0
    assert json.loads((tmp_path / "analysis" / "analysis.json").read_text())["weights"] == "raw"
    # the Python API sees the same sets
    for weights, state in (("ema", ema), ("raw", raw), (None, ema)):
        model = advrep.load(full, checkpoint="last", weights=weights)
        assert torch.equal(model.state_dict()[HEAD], state[HEAD]), weights
    plain = tmp_path / "plain"
    assert main(tiny_command(tiny_mnist, plain, "--train.epochs=1", "--eval.after_train=false")) == 0
    capsys.readouterr()
    assert main(["eval", str(plain), "--quiet", "--eval.weights=ema"]) == 2
    assert "holds no EMA weights" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="holds no EMA weights"):
        advrep.load(plain, weights="ema")
    # EMA cannot be switched on or off when resuming
    assert main(["train", "--quiet", "--resume", str(plain), "--train.ema=0.99", "--train.epochs=2"]) == 2
    assert "cannot change when a run is resumed" in capsys.readouterr().err


@pytest.mark.slow
def test_ema_is_passive_the_trained_weights_are_those_of_a_run_without_it(tiny_mnist, tmp_path):
    runs = {}
    for name, extra in (("plain", []), ("ema", ["--train.ema=0.9"])):
        runs[name] = tmp_path / name
        assert main(tiny_command(tiny_mnist, runs[name], "--train.epochs=2", "--eval.after_train=false", *extra)) == 0
    plain, ema = _tensors(runs["plain"] / "last.safetensors"), _tensors(runs["ema"] / "last.safetensors")
    assert all(torch.equal(plain[k], ema[k]) for k in plain), "validating the EMA changed the training"
    averaged = _tensors(runs["ema"] / "last.ema.safetensors")
    assert not torch.equal(averaged[HEAD], ema[HEAD])


@pytest.mark.slow
def test_python_train_with_ema_evaluates_and_returns_the_ema_weights(tiny_mnist, tmp_path):
    from conftest import QUICKSTART

    run = advrep.train(QUICKSTART, out=tmp_path / "run", data={"data_dir": str(tiny_mnist), "val_size": 16},
                       threat={"steps": 1}, train={"epochs": 1, "batch_size": 32, "val_steps": 1, "ema": 0.5},
                       eval={"n": 16, "attacks": ["fgsm"], "checks": False, "corruptions": "none"})
    assert run.report["weights"] == "ema"
    ema = _tensors(run.dir / "best.ema.safetensors")
    assert torch.equal(run.model().state_dict()[HEAD], ema[HEAD])
    assert not torch.equal(run.model(weights="raw").state_dict()[HEAD], ema[HEAD])


# ------------------------------------------------------------------------ logging sinks


def test_sink_rows_are_flat_scalars():
    from advrep.sinks import scalars

    row = {"epoch": 3, "lr": 0.1, "loss": 0.5, "eps": 0.3, "train_time_s": 9.0, "val_robust": 0.25,
           "readouts": {"feature_shift": {"mean": 1.5, "per_class": [1, 2]}, "name": "x", "ok": True}}
    assert scalars(row) == {"lr": 0.1, "loss": 0.5, "eps": 0.3, "val_robust": 0.25,
                            "readouts/feature_shift/mean": 1.5, "readouts/ok": 1.0}


def test_a_missing_logging_package_is_one_clear_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    import importlib

    from advrep import sinks

    real = importlib.import_module

    def without(name, *args):
        if name in ("tensorboard", "wandb"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *args)

    monkeypatch.setattr(sinks.importlib, "import_module", without)
    for sink in ("tensorboard", "wandb"):
        out = tmp_path / sink
        assert main(["train", "--quiet", "--out", str(out), "--data-dir", str(tmp_path / "no-data"),
                     f"--train.log={sink}"]) == 2
        err = capsys.readouterr().err
        assert f"train.log={sink} needs the {sink} package" in err and f"advrep[{sink}]" in err
        assert not out.exists()
    with pytest.raises(ConfigError, match="train.log"):
        config.load(None, ["--train.log=mlflow"])


@pytest.mark.slow
def test_tensorboard_sink_writes_every_epoch_read_back(tiny_mnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(tiny_command(tiny_mnist, run, "--train.log=tensorboard", "--train.epochs=2",
                             "--eval.after_train=false", "--train.readouts=[feature_shift]")) == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "eps", "val_clean", "val_robust"} <= tags
    assert any(t.startswith("readouts/") for t in tags), tags
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("val_robust")
    assert [e.step for e in logged] == [1, 2]
    assert [e.value for e in logged] == pytest.approx([r["val_robust"] for r in rows])


@pytest.mark.slow
def test_wandb_sink_writes_an_offline_run(tiny_mnist, tmp_path, monkeypatch):
    import wandb  # noqa: F401  (in the test extra: a missing wandb fails here, it does not skip)

    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    assert main(tiny_command(tiny_mnist, run, "--train.log=wandb", "--train.epochs=2", "--eval.after_train=false")) == 0
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run / "wandb").iterdir())
    history = wandb_history(next(offline[0].glob("run-*.wandb")))
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["_step"] for h in history] == [1, 2]
    for h, r in zip(history, rows):
        assert {k: h[k] for k in ("loss", "lr", "eps", "val_clean", "val_robust")} == pytest.approx(
            {k: r[k] for k in ("loss", "lr", "eps", "val_clean", "val_robust")})


def wandb_history(path):
    """The logged rows of an offline W&B run file: LevelDB-log records (32 KiB blocks, 7-byte record
    headers: crc, length, type 1 full / 2 first / 3 middle / 4 last) after a 7-byte W&B header, each a
    wandb_internal Record protobuf."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw, block, pos, records, pending = path.read_bytes(), 32768, 7, [], b""
    assert raw[:4] == b":W&B", "not a W&B run file"
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            records.append(pending)
    history = []
    for data in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return history


@pytest.mark.slow
def test_a_kill_around_any_ema_file_operation_is_recovered_bit_identically(tiny_mnist, tmp_path):
    """The commit protocol with the EMA file in the set (tests/test_reliability.py's injector, narrowed
    to the renames and links of .ema. files around the commit of the last of 2 epochs): each copy is
    resumed and must end as the uninterrupted run."""
    from advrep import fileops
    from advrep.runs import POINTER, Run

    extra = ["--train.ema=0.9", "--train.awp_gamma=0.01", "--train.epochs=2"]
    ref, copies = tmp_path / "ref", tmp_path / "copies"
    copies.mkdir()
    ops = ("write_with", "append_line", "link", "remove", "_rename")
    real = {name: getattr(fileops, name) for name in ops}
    commits, points, last = [0], [], [None]

    def snapshot(label):
        state = sorted((str(p.relative_to(ref)), p.stat().st_size, p.read_bytes()) for p in ref.rglob("*")
                       if p.is_file() and p.name != ".lock")
        if state != last[0]:
            last[0] = state
            shutil.copytree(ref, copies / f"{len(points):02d}", ignore=shutil.ignore_patterns(".lock"))
            points.append(label)

    def wrap(name):
        def op(*args, **kwargs):
            target = Path(args[-1] if name in ("_rename", "link") else args[0]).name
            watched = ".ema." in target and name in ("_rename", "link") and ("e0002" in target or commits[0] == 2)
            if watched:
                snapshot(f"before {name} {target}")
            out = real[name](*args, **kwargs)
            if watched:
                snapshot(f"after {name} {target}")
            if name == "_rename" and target == POINTER:
                commits[0] += 1
            return out
        return op

    try:
        for name in ops:
            setattr(fileops, name, wrap(name))
        assert main(tiny_command(tiny_mnist, ref, *extra)) == 0
    finally:
        for name, fn in real.items():
            setattr(fileops, name, fn)
    assert len(points) >= 4, points
    print(f"\n{len(points)} kill points: {points}")

    def outcome(run):
        rows = [{k: v for k, v in r.items() if k != "train_time_s"} for r in Run(run).metrics()]
        return ({k: v for name in ("last.safetensors", "last.ema.safetensors", "best.ema.safetensors")
                 for k, v in ((f"{name}:{k}", v) for k, v in _tensors(run / name).items())},
                rows, json.loads((run / "report.json").read_text())["clean_acc"])

    expected = outcome(ref)
    for k, label in enumerate(points):
        run = copies / f"{k:02d}"
        assert main(["train", "--quiet", "--resume", str(run)]) == 0, label
        weights, rows, clean = outcome(run)
        assert weights.keys() == expected[0].keys(), label
        assert all(torch.equal(weights[key], expected[0][key]) for key in weights), f"weights differ: {label}"
        assert (rows, clean) == expected[1:], label
