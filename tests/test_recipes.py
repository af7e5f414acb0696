"""Each recipe's claims about the released code, tested on the recipe itself: the training
attack its method runs (loss, random start, eps, step, steps) and, for ADR, the layer its term
compares. The formulas are compared with the authors' functions elsewhere (test_<method>.py);
these tests need no original code, so they run in CI.

A recipe is loaded and resolved as `advrep train` does; its method's ``perturb`` runs once on
a small stand-in network with the recipe's head and reverse-attention setting, with
``Method.attack`` recorded instead of run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from advrep import config
from advrep.data import info
from advrep.factory import build_model
from advrep.methods.base import Method
from advrep.threat import Threat

ROOT = Path(__file__).resolve().parents[1]
CIFAR = dict(eps=8 / 255, step_size=0.007, steps=10)


def recipe(name: str):
    cfg = config.load(ROOT / "configs" / f"{name}.yaml")
    return config.resolve(cfg, info(cfg.data.dataset))


def recorded_attack(name: str, monkeypatch) -> tuple[dict, object]:
    """The one ``Method.attack`` call the recipe's ``perturb`` makes, and the resolved config."""
    cfg = recipe(name)
    method = config.create_method(cfg.method, cfg.terms)
    data = info(cfg.data.dataset)
    model = build_model(dataclasses.replace(cfg.model, arch="small-cnn"), data).eval()
    calls = []

    def attack(self, model, x, y, threat, **kwargs):
        calls.append({"threat": threat, "model": model, "x": x, **kwargs})
        return x

    monkeypatch.setattr(Method, "attack", attack)
    torch.manual_seed(0)
    x = torch.rand(4, data.channels, data.image_size, data.image_size)
    y = torch.tensor([0, 1, 2, 3])
    method.perturb(model, x, y, Threat.of(cfg.threat))
    (call,) = calls
    return call, cfg


ANCRA = ["trades+anc-cifar10-resnet18", "trades+anc-cifar10-wrn-34-10", "trades+anc-tiny-imagenet-preact-resnet18",
         "pgd-at+anc-cifar10-resnet18", "mart+anc-cifar10-resnet18", "trades+anc-mnist-small-cnn"]


@pytest.mark.parametrize("name", ANCRA)
def test_ancra_recipes_train_with_the_code_s_ce_pgd(name, monkeypatch):
    """The released TRADES-ANCRA makes its adversarial examples with CE-PGD from x + 0.001·N(0, 1)
    (its `u_pgd`), not with TRADES' KL attack; eps 8/255, step 0.007, 10 steps on CIFAR-like data."""
    call, cfg = recorded_attack(name, monkeypatch)
    assert call["loss"] == "ce" and call["random_start"] == "normal" and not call.get("targeted")
    assert "clean_logits" not in call, "no KL target: this is not TRADES' attack"
    expected = Threat(eps=0.3, step_size=0.01, steps=40) if cfg.data.dataset == "mnist" else Threat(**CIFAR)
    assert call["threat"] == expected
    assert cfg.terms["anc"]["base_attack"] == "ce"


def test_trades_anc_attacks_with_ce_pgd_by_default(monkeypatch):
    from advrep import methods

    assert methods.create("trades+anc").terms[0].cfg.base_attack == "ce"
    assert methods.create("trades+anc", terms={"anc": {"base_attack": "own"}}).terms[0].cfg.base_attack == "own"


@pytest.mark.parametrize("name", ["spat-cifar10-resnet18", "spat-cifar10-wrn-34-10"])
def test_spat_cifar_recipes_attack_as_the_released_code(name, monkeypatch):
    """The released SPAT attacks at eps 0.031 with step 0.007, 10 steps, on its pair-consistency
    loss against the fixed clean side, from x + 0.001·N(0, 1)."""
    call, cfg = recorded_attack(name, monkeypatch)
    assert call["threat"] == Threat(eps=0.031, step_size=0.007, steps=10)
    assert call["random_start"] == "normal" and callable(call["loss"])
    model, x = call["model"], call["x"]
    with torch.no_grad():
        logits = model(x)
        y = torch.zeros(len(x), dtype=torch.long)
        at_clean = call["loss"](logits, y)
        elsewhere = call["loss"](logits + torch.randn_like(logits), y)
    assert at_clean.abs().max() < 1e-6 and (elsewhere > 1e-4).all(), "the pair-consistency loss, zero at x' = x"
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    assert "0.031" in text and "0.007" in text and "2/255, 10 steps (the code's" not in text


ADR = {"pgd-at+adr-mnist-small-cnn": "feature_extractor", "trades+adr-mnist-small-cnn": "feature_extractor",
       "pgd-at+adr-cifar10-resnet18": None, "pgd-at+adr-cifar10-wrn-34-10": None,
       "trades+adr-cifar10-resnet18": None, "trades+adr-cifar10-wrn-34-10": None}


@pytest.mark.parametrize("name", sorted(ADR))
def test_adr_recipes_compare_the_port_s_layer(name):
    """ADR compares the features before any dropout: the penultimate ones of the ResNet and the
    WRN (the authors' 512/640-d), the small CNN's convolutional ones (the port's); the small CNN's
    head starts from N(0, 0.01), where the reference's zero head lets the compactness terms
    collapse the features."""
    cfg = recipe(name)
    method = config.create_method(cfg.method, cfg.terms)
    (term,) = method.terms
    model = build_model(cfg.model, info(cfg.data.dataset))
    assert term.layer_of(model) == ADR[name]
    assert method.taps(model) == (() if ADR[name] is None else (ADR[name],))
    if cfg.model.arch == "small-cnn":
        assert cfg.model.head_args == {"init_std": 0.01} and model.head.weight.abs().sum() > 0
        assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("name", sorted(ADR))
def test_adr_recipes_keep_the_paper_s_weights_but_the_small_cnn_s_compactness(name):
    """Every part weighs 1 (global smoothness 0), as in the paper and the port, except the two
    compactness terms of the small-CNN recipes: 0.1, because at 1 they diverge on its
    unnormalized convolutional features (docs/results/adr-small-cnn-init.md)."""
    cfg = recipe(name)
    (term,) = config.create_method(cfg.method, cfg.terms).terms
    compactness = 0.1 if name.endswith("mnist-small-cnn") else 1.0
    c = term.cfg
    weights = (c.lc_weight, c.gc_weight, c.smt_weight, c.ent_weight, c.gs_weight)
    assert weights == (compactness, compactness, 1.0, 1.0, 0.0)
    assert c.omega_other == pytest.approx(-1 / 99)
