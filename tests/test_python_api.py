"""advrep from Python: the examples of docs/python.md run as written, the calls check their
inputs, and the CLI and the Python calls give the same report for the same settings."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

import advrep
from advrep import models
from advrep.cli import main
from advrep.errors import ConfigError
from conftest import ROOT

DOC = ROOT / "docs" / "python.md"


@pytest.fixture
def mnist_cache(tmp_path, shared, monkeypatch):
    """A data cache whose mnist/ is the shared copy, the way a user's download would be."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mnist").symlink_to(shared("mnist"), target_is_directory=True)
    monkeypatch.setenv("ADVREP_DATA", str(cache))
    return cache


@pytest.mark.slow
def test_the_examples_of_docs_python_md_run_as_written(mnist_cache, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    work = tmp_path / "work"
    work.mkdir()
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    monkeypatch.chdir(work)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{DOC.name} block {i + 1}", "exec"), namespace)  # noqa: S102 - the docs' own code
    assert namespace["report"].robust_acc is not None and (work / "runs" / "python-quick" / "report.json").is_file()
    assert namespace["run"].report["attacks"]["pgd"]["n"] == 100


def test_the_public_names_are_listed_documented_and_typed():
    import inspect

    for name in advrep.__all__:
        if name == "__version__":
            continue
        obj = getattr(advrep, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, name
            assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()
                       if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)), name
    assert set(dir(advrep)) >= set(advrep.__all__)


def _trained_small_cnn(shared) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A small CNN trained for 60 clean steps on real MNIST (a model worth attacking), and 100
    test images."""
    import numpy as np

    train, test = np.load(shared("mnist") / "train.npz"), np.load(shared("mnist") / "test.npz")
    x, y = torch.from_numpy(train["x"][:1920]).unsqueeze(1).float() / 255, torch.from_numpy(train["y"][:1920])
    torch.manual_seed(0)
    model = models.create("small-cnn", in_channels=1, image_size=28)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(60):
        xb, yb = x[step * 32 % 1920:][:32], y[step * 32 % 1920:][:32]
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), torch.from_numpy(test["x"][:100]).unsqueeze(1), torch.from_numpy(test["y"][:100])


def test_the_cli_and_python_give_the_same_report(shared, tmp_path, capsys):
    model, x, y = _trained_small_cnn(shared)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    settings = dict(attacks=["fgsm", "pgd", "cw"], checks=False, corruptions="none", pgd_steps=10, cw_steps=10, n=100)
    assert main(["eval", "--weights", str(tmp_path / "model.pt"), "--arch", "small-cnn", "--dataset", "mnist",
                 "--data-dir", str(shared("mnist")), "--n", "100", "--quiet", "--out", str(tmp_path / "cli"),
                 "--eval.attacks=[fgsm,pgd,cw]", "--eval.checks=false", "--eval.corruptions=none",
                 "--eval.pgd_steps=10", "--eval.cw_steps=10"]) == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    py = advrep.evaluate(model, x, y, dataset="mnist", **settings)
    assert py["attacks"] == cli["attacks"] and py["eval"] == cli["eval"] and py["masks"] == cli["masks"]
    timeless = lambda cost: {k: {c: v for c, v in facts.items() if c != "wall_s"} for k, facts in cost.items()}  # noqa
    assert timeless(py["cost"]["attacks"]) == timeless(cli["cost"]["attacks"]), "the same passes, counted"
    assert (py["eps"], py["threat_model"], py["n"]) == (cli["eps"], cli["threat_model"], cli["n"])
    assert 0.5 < py.clean_acc and py["attacks"]["pgd"]["acc"] < py.clean_acc
    assert str(py).splitlines()[2].startswith("clean")


def test_float_and_uint8_images_give_the_same_report_and_bad_inputs_one_clear_error(shared):
    model, x, y = _trained_small_cnn(shared)
    settings = dict(dataset="mnist", attacks=["pgd"], checks=False, corruptions="none", pgd_steps=5)
    assert advrep.evaluate(model, x, y, **settings)["attacks"] == \
        advrep.evaluate(model, x.float() / 255, y, **settings)["attacks"]
    cases = [(x.float(), "floats in [0, 255]"), (x[:, 0], "add the channel axis"), (x.long(), "dtype torch.int64"),
             (x.float() / 255 * float("nan"), "floats in"), (torch.zeros(100, 3, 28, 28), "cannot run on images")]
    for bad, needle in cases:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            advrep.evaluate(model, bad, y, **settings)
    for labels, needle in [(y + 10, "outside the 10 classes"), (y[:50], "100 images but 50 labels"),
                           (y.float(), "1-D integer tensor")]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            advrep.evaluate(model, x, labels, **settings)
    with pytest.raises(ConfigError, match="eval.pgd_steps"):
        advrep.evaluate(model, x, y, dataset="mnist", attacks=["pgd"], pgd_steps=0)
    with pytest.raises(ConfigError, match="unknown evaluation attack 'pdg'"):
        advrep.evaluate(model, x, y, attacks=["pdg"])


def test_attack_and_method_are_the_registries(shared):
    model, x, y = _trained_small_cnn(shared)
    x_adv = advrep.attack("pgd", model, x[:20], y[:20], dataset="mnist", pgd_steps=5)
    assert x_adv.shape == (20, 1, 28, 28) and (x_adv - x[:20].float() / 255).abs().max() <= 0.3 + 1e-6
    assert (model(x_adv).argmax(1) == y[:20]).float().mean() < (model(x[:20].float() / 255).argmax(1) == y[:20]).float().mean()
    with pytest.raises(ConfigError, match="reports robust accuracy"):
        advrep.attack("autoattack", model, x, y)
    method = advrep.method("trades+lp", beta=3.0, terms={"lp": {"weight": 0.2}})
    assert method.name == "trades+lp" and method.hparams()["beta"] == 3.0
    threat = advrep.Threat("Linf", eps=0.3, step_size=0.1, steps=2)
    x_adv = method.perturb(model, x[:8].float() / 255, y[:8], threat)
    loss, metrics = method.objective(model, x[:8].float() / 255, x_adv, y[:8], threat)
    assert torch.isfinite(loss) and "lp_pair" in metrics


@pytest.mark.slow
def test_train_on_tensors_and_a_network_of_ones_own_then_load_it(shared, tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("ADVREP_DATA", str(tmp_path / "cache"))
    train, test = np.load(shared("mnist") / "train.npz"), np.load(shared("mnist") / "test.npz")
    data = (torch.from_numpy(train["x"][:256]).unsqueeze(1), torch.from_numpy(train["y"][:256]),
            torch.from_numpy(test["x"][:64]).unsqueeze(1).float() / 255, torch.from_numpy(test["y"][:64]))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    run = advrep.train(out=tmp_path / "run", tensors=data, model=net, method="pgd-at",
                       threat={"eps": 0.1, "step_size": 0.05, "steps": 2},
                       train={"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.001},
                       data={"val_size": 32}, eval={"attacks": ["pgd"], "checks": False, "corruptions": "none"})
    assert run.report["n"] == 64 and run.report["architecture"] == "custom" and len(run.metrics) == 1
    loaded = run.model()
    assert loaded is net and not loaded.training
    cfg = (run.dir / "config.yaml").read_text()
    assert "dataset: npz" in cfg and str(tmp_path / "cache" / "tensors") in cfg
    with pytest.raises(ConfigError, match="8-bit images"):
        advrep.train(out=tmp_path / "other", tensors=(data[0].float() / 300, *data[1:]))
    from advrep.errors import CheckpointError

    with pytest.raises(CheckpointError, match="advrep.load"):
        advrep.load(run.dir)
    assert os.listdir(tmp_path / "cache" / "tensors")
