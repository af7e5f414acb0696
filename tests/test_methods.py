"""Methods: the registry contract for every method, and each formula on hand-checkable tensors."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import methods, models
from advrep.config import build
from advrep.errors import ConfigError


def small_model():
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28)
    nn.init.normal_(model.head.weight, std=0.1)  # the reference zero-init makes every logit equal
    return model


@pytest.fixture
def batch():
    torch.manual_seed(2)
    return torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_every_method_honours_the_contract(name, batch):
    x, y = batch
    model = small_model().train()
    method = methods.create(name, eps=0.3, step_size=0.1, steps=3)
    x_adv = method.perturb(model, x, y)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters()), "perturb must not touch parameter gradients"
    assert model.training, "perturb must leave the model's mode as it found it"
    loss, metrics = method.objective(model, x, x_adv, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_every_method_rejects_unknown_hyperparameters(name):
    with pytest.raises(ConfigError, match="unknown config key 'method.nonsense'"):
        methods.create(name, nonsense=1)


def test_standard_is_clean_cross_entropy(batch):
    x, y = batch
    model = small_model().eval()  # no dropout: two passes must agree
    method = methods.create("standard")
    assert method.perturb(model, x, y) is x
    loss, _ = method.objective(model, x, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))


def test_pgd_at_loss_is_adversarial_cross_entropy(batch):
    x, y = batch
    model = small_model().eval()  # no dropout: two passes must agree
    method = methods.create("pgd-at", eps=0.3, step_size=0.1, steps=2)
    x_adv = torch.rand_like(x)
    loss, metrics = method.objective(model, x, x_adv, y)
    assert torch.allclose(loss, F.cross_entropy(model(x_adv), y))
    assert torch.allclose(metrics["acc_adv"], (model(x_adv).argmax(1) == y).float().mean())


class Fixed(nn.Module):
    """A "model" that returns given logits for two known inputs (hand-checkable)."""

    def __init__(self, clean, adv):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.table = {0: clean, 1: adv}

    def forward(self, x):
        return self.scale * self.table[int(x.flatten()[0])]


def test_trades_loss_on_hand_logits():
    clean = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    model = Fixed(clean, adv)
    x, x_adv = torch.zeros(2, 1), torch.ones(2, 1)
    beta = 6.0
    loss, metrics = methods.create("trades", beta=beta).objective(model, x, x_adv, y)
    p = F.softmax(clean, 1)
    q = F.softmax(adv, 1)
    ce = -(p[0, 0].log() + p[1, 1].log()) / 2
    kl = (p * (p.log() - q.log())).sum() / 2
    assert torch.allclose(metrics["loss_ce"], ce)
    assert torch.allclose(metrics["loss_kl"], kl)
    assert torch.allclose(loss, ce + beta * kl)
    # nothing is detached: the clean side of the KL term carries gradient as well
    loss.backward()
    assert model.scale.grad is not None and model.scale.grad != 0


def test_trades_attack_uses_fixed_clean_target_and_small_normal_start(batch, monkeypatch):
    x, y = batch
    model = small_model()
    seen = {}

    def fake_pgd(model, x, y, **kwargs):
        seen.update(kwargs)
        return x

    monkeypatch.setattr(methods.base.attacks, "pgd", fake_pgd)
    methods.create("trades").perturb(model, x, y)
    assert seen["loss"] == "kl" and seen["random_start"] == "normal"
    assert seen["clean_logits"].shape == (6, 10) and not seen["clean_logits"].requires_grad


def test_attack_bn_mode_is_used_during_the_attack_only(batch, monkeypatch):
    x, y = batch
    model = small_model().train()
    modes = []
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: modes.append(m.training) or x)
    methods.create("pgd-at", attack_bn="eval").perturb(model, x, y)
    methods.create("pgd-at", attack_bn="train").perturb(model, x, y)
    assert modes == [False, True] and model.training


def test_method_config_validation():
    with pytest.raises(ConfigError, match="valid values: eval, train"):
        methods.create("pgd-at", attack_bn="none")
    with pytest.raises(ConfigError, match="expected float"):
        methods.create("trades", beta="six")
    cfg = build(methods.create("trades").Config, {"beta": "3"}, "method")
    assert cfg.beta == 3.0
