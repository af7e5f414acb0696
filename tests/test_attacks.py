"""Attacks: threat-model constraints, input-only gradients, losses on hand-checkable logits."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import attacks
from advrep.attacks.losses import cw_margin, kl_to, targeted_loss
from advrep.attacks.pgd import l1_step, project_l1_box
from advrep.errors import ConfigError


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(16, 5))


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.rand(8, 3, 4, 4), torch.randint(0, 5, (8,))


@pytest.mark.parametrize("norm,eps", [("Linf", 8 / 255), ("L2", 0.5), ("L1", 2.0)])
@pytest.mark.parametrize("start", ["uniform", "normal", None])
def test_pgd_stays_in_threat_model(batch, norm, eps, start):
    x, y = batch
    model = tiny_model().eval()
    x_adv = attacks.pgd(model, x, y, eps=eps, step_size=eps / 3, steps=5, norm=norm, random_start=start)
    delta = (x_adv - x).flatten(1)
    size = {"Linf": delta.abs().amax(1), "L2": delta.norm(dim=1), "L1": delta.abs().sum(1)}[norm]
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert x_adv.shape == x.shape and not x_adv.requires_grad


def test_pgd_increases_loss_and_fools_more(batch):
    x, y = batch
    model = tiny_model().eval()
    x_adv = attacks.pgd(model, x, y, eps=0.3, step_size=0.05, steps=20)
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1


# ----------------------------------------------------------------------------- L1


def test_l1_projection_by_hand():
    # inside the box, outside the ball: soft threshold λ with 1.0 − 3λ = 0.6, λ = 2/15
    x = torch.full((1, 3), 0.5)
    z = project_l1_box(torch.tensor([[0.5, -0.3, 0.2]]), x, 0.6)
    assert torch.allclose(z, torch.tensor([[0.5 - 2 / 15, -(0.3 - 2 / 15), 0.2 - 2 / 15]]), atol=1e-6)
    # the box binds first: pixel 0.9 can move up by 0.1 only, after which the ball holds (λ = 0)
    z = project_l1_box(torch.tensor([[0.5, -0.3, 0.2]]), torch.tensor([[0.9, 0.5, 0.5]]), 0.6)
    assert torch.allclose(z, torch.tensor([[0.1, -0.3, 0.2]]))
    # the box binds and the ball too: 0.1 + (0.3 − λ) + (0.2 − λ) = 0.4 gives λ = 0.1
    z = project_l1_box(torch.tensor([[0.5, -0.3, 0.2]]), torch.tensor([[0.9, 0.5, 0.5]]), 0.4)
    assert torch.allclose(z, torch.tensor([[0.1, -0.2, 0.1]]), atol=1e-6)
    # a point already inside both is its own projection; eps 0 gives 0
    v = torch.tensor([[0.1, -0.1, 0.05]])
    assert torch.equal(project_l1_box(v, x, 1.0), v)
    assert torch.equal(project_l1_box(v, x, 0.0), torch.zeros_like(v))


def test_l1_projection_is_the_nearest_point_of_ball_and_box():
    """Against scipy's SLSQP on the same small quadratic programme, and idempotent."""
    from scipy.optimize import minimize

    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(1, 6, generator=gen, dtype=torch.float64)
        v = torch.randn(1, 6, generator=gen, dtype=torch.float64)
        eps = 0.7
        z = project_l1_box(v, x, eps)
        xv, vv = x[0].numpy(), v[0].numpy()
        # smooth form: z = u − w with 0 ≤ u ≤ 1 − x, 0 ≤ w ≤ x, Σ(u + w) ≤ eps
        res = minimize(lambda t: ((t[:6] - t[6:] - vv) ** 2).sum(), np.zeros(12), method="SLSQP",
                       bounds=[(0, 1 - a) for a in xv] + [(0, a) for a in xv],
                       constraints=[{"type": "ineq", "fun": lambda t: eps - t.sum()}],
                       options={"ftol": 1e-14, "maxiter": 1000})
        ref = res.x[:6] - res.x[6:]
        assert np.allclose(z[0].numpy(), ref, atol=1e-4)
        assert z.abs().sum() <= eps + 1e-9 and (x + z).min() >= 0 and (x + z).max() <= 1
        assert torch.allclose(project_l1_box(z, x, eps), z, atol=1e-9)


def test_l1_step_is_sparse_unit_and_skips_pixels_the_box_holds():
    grad = torch.tensor([[3.0, -2.0, 1.0, 0.5, -4.0, 0.1, 0.0, 2.5]])
    x = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.0, 0.5, 0.5, 1.0]])  # pixel 4 at 0 pushed down, 7 at 1 pushed up
    step = l1_step(grad, x, torch.zeros_like(x), sparsity=0.25)  # 2 of 8 coordinates
    assert torch.equal(step, torch.tensor([[0.5, -0.5, 0, 0, 0, 0, 0, 0]]))
    assert step.abs().sum() == 1


def test_l1_pgd_raises_the_loss_and_fgsm_is_one_sparse_step(batch):
    x, y = batch
    model = tiny_model().eval()
    x_adv = attacks.pgd(model, x, y, eps=2.0, step_size=0.5, steps=10, norm="L1")
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1
    x_f = attacks.fgsm(model, x, y, eps=1.0, norm="L1")
    assert ((x_f - x).abs().flatten(1).sum(1) <= 1 + 1e-5).all()
    assert ((x_f != x).flatten(1).sum(1) <= math.ceil(0.05 * 48)).all()  # sparse: the top 5% at most


def test_l1_autoattack_and_square_run_at_the_radius():
    torch.manual_seed(0)  # 8×8 images: pyautoattack's L1 Square divides the side by 5
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5)).eval()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    x_sq = attacks.square(model, x, y, eps=1.0, norm="L1", queries=20)
    assert ((x_sq - x).abs().flatten(1).sum(1) <= 1 + 1e-4).all() and x_sq.min() >= 0 and x_sq.max() <= 1
    mask, info = attacks.autoattack(model, x, y, eps=1.0, norm="L1", version="custom", attacks=["apgd-ce"],
                                    progress=False)
    assert info["norm"] == "L1" and mask.dtype == torch.bool and len(mask) == len(x)


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
