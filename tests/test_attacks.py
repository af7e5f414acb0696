"""Attacks: threat-model constraints, input-only gradients, losses on hand-checkable logits."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import attacks
from advrep.attacks.losses import cw_margin, kl_to, targeted_loss
from advrep.errors import ConfigError


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(16, 5))


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.rand(8, 3, 4, 4), torch.randint(0, 5, (8,))


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5)])
@pytest.mark.parametrize("start", ["uniform", "normal", None])
def test_pgd_stays_in_threat_model(batch, norm, eps, start):
    x, y = batch
    model = tiny_model().eval()
    x_adv = attacks.pgd(model, x, y, eps=eps, step_size=eps / 3, steps=5, norm=norm, random_start=start)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and not x_adv.requires_grad


def test_pgd_increases_loss_and_fools_more(batch):
    x, y = batch
    model = tiny_model().eval()
    x_adv = attacks.pgd(model, x, y, eps=0.3, step_size=0.05, steps=20)
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1


def test_attack_takes_input_gradient_only_and_restores_flags_and_mode(batch):
    x, y = batch
    model = tiny_model()
    model.train()
    model[1].weight.requires_grad_(False)  # a caller's frozen layer must stay frozen
    flags = [p.requires_grad for p in model.parameters()]
    attacks.pgd(model, x, y, eps=0.1, step_size=0.03, steps=3, restarts=2)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training  # the attack does not change the mode it was given
    model.eval()
    attacks.fgsm(model, x, y, eps=0.1)
    assert not model.training


def test_fgsm_is_one_signed_step_of_eps(batch):
    x, y = batch
    x = x * 0.5 + 0.25  # keep away from the box so no clipping interferes
    model = tiny_model().eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    expected = x + 0.1 * grad.sign()
    assert torch.allclose(attacks.fgsm(model, x, y, eps=0.1), expected)


def test_l2_step_is_normalized_gradient(batch):
    x, y = batch
    x = x * 0.5 + 0.25
    model = tiny_model().eval()
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    unit = grad / grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    out = attacks.pgd(model, x, y, eps=1.0, step_size=0.2, steps=1, norm="L2", random_start=None)
    assert torch.allclose(out, x + 0.2 * unit, atol=1e-6)


def test_cw_margin_on_hand_logits():
    logits = torch.tensor([[2.0, 5.0, 1.0], [0.0, -1.0, 3.0]])
    y = torch.tensor([1, 0])
    # sample 0: max other = 2, true = 5 -> -3; sample 1: max other = 3, true = 0 -> 3
    assert torch.allclose(cw_margin(logits, y), torch.tensor([-3.0, 3.0]))
    # targeted at class 2: z_t - max_{j != t} z_j
    assert torch.allclose(targeted_loss(cw_margin)(logits, torch.tensor([2, 2])), torch.tensor([1.0 - 5.0, 3.0 - 0.0]))


def test_kl_loss_zero_at_clean_point_and_positive_elsewhere():
    clean = torch.tensor([[1.0, 2.0, 0.5]])
    loss = kl_to(clean)
    assert loss(clean, None).abs().item() < 1e-7
    p = F.softmax(clean, 1)
    q_logits = torch.tensor([[0.0, 0.0, 3.0]])
    expected = (p * (p.log() - F.log_softmax(q_logits, 1))).sum()
    assert torch.allclose(loss(q_logits, None), expected.view(1))


def test_targeted_pgd_reaches_target_on_linear_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    x = torch.rand(16, 3, 2, 2)
    target = torch.full((16,), 3)
    x_adv = attacks.pgd(model, x, target, eps=1.0, step_size=0.1, steps=30, targeted=True)
    assert (model(x_adv).argmax(1) == 3).float().mean() > 0.9


def test_restarts_keep_successful_examples(batch):
    x, y = batch
    model = tiny_model().eval()
    single = attacks.pgd(model, x, y, eps=0.05, step_size=0.02, steps=3)
    torch.manual_seed(0)
    multi = attacks.pgd(model, x, y, eps=0.05, step_size=0.02, steps=3, restarts=5)
    with torch.no_grad():
        fooled_single = (model(single).argmax(1) != y).sum()
        fooled_multi = (model(multi).argmax(1) != y).sum()
    assert fooled_multi >= fooled_single


def test_custom_loss_callable_is_maximized(batch):
    x, y = batch
    model = tiny_model().eval()
    logit0 = lambda logits, _: logits[:, 0]  # noqa: E731
    x_adv = attacks.pgd(model, x, y, eps=0.2, step_size=0.05, steps=5, loss=logit0)
    with torch.no_grad():
        assert (model(x_adv)[:, 0] >= model(x)[:, 0] - 1e-6).all()


def test_bad_arguments_are_clear(batch):
    x, y = batch
    model = tiny_model().eval()
    with pytest.raises(ConfigError, match="unknown norm"):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, norm="L3")
    with pytest.raises(ConfigError, match="unknown attack loss"):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, loss="hinge")
    with pytest.raises(ConfigError, match="no targeted form"):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, loss="kl", targeted=True)
