"""SPAT: its two losses on hand-checkable tensors, the factors' gradients, the attack, the head's
scale and projection, and the hard-pair and confusion read-outs."""

import io
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import config, methods
from advrep.errors import ConfigError
from advrep.factory import build_model
from advrep.methods.spat import modulated_logits, pair_consistency
from advrep.methods.spat_readouts import hardest_pairs, plot_confusion
from advrep.models import CosineHead, create
from advrep.readouts import Probe, run
from advrep.threat import Threat


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def rob_by_hand(c, c_adv, n, s):
    """Σ_k κ_k(κ_k + n) of one sample, κ = P(log P − log Q), written out in plain Python."""
    p, q = softmax([s * v for v in c]), softmax([s * v for v in c_adv])
    kappa = [pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q)]
    return sum(k * (k + n) for k in kappa)


C = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.9, 0.3]], dtype=torch.float64)
C_ADV = torch.tensor([[0.3, 0.4, 0.0], [0.2, 0.5, 0.6]], dtype=torch.float64)
Y = torch.tensor([0, 1])


def test_modulated_logits_on_hand_values():
    z = modulated_logits(C, Y, m=0.2, s=8.0)
    expected = torch.tensor([[8 * 0.7 * 0.5, 8 * 0.4 * 0.2, 8 * 0.1 * -0.1],   # y = 0: (1.2 − 0.5)·0.5, ...
                             [8 * 0.3 * 0.1, 8 * 0.3 * 0.9, 8 * 0.5 * 0.3]],  # y = 1: (1.2 − 0.9)·0.9
                            dtype=torch.float64)
    torch.testing.assert_close(z, expected)


def test_pair_consistency_on_hand_values():
    # P = (1/2, 1/2) and Q = (3/4, 1/4): κ = (½ log(2/3), ½ log 2)
    c, c_adv = torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[math.log(3) / 8, 0.0]], dtype=torch.float64)
    k0, k1 = 0.5 * math.log(2 / 3), 0.5 * math.log(2)
    value = pair_consistency(c, c_adv, n=0.2, s=8.0)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(k0 * (k0 + 0.2) + k1 * (k1 + 0.2), rel=1e-12)
    rows = pair_consistency(C, C_ADV, n=0.2, s=8.0)
    for i in range(2):
        assert rows[i].item() == pytest.approx(rob_by_hand(C[i].tolist(), C_ADV[i].tolist(), 0.2, 8.0), rel=1e-10)


def test_pair_consistency_is_squared_kappa_plus_n_times_kl():
    torch.manual_seed(0)
    c, c_adv = torch.rand(5, 10, dtype=torch.float64) * 2 - 1, torch.rand(5, 10, dtype=torch.float64) * 2 - 1
    p, log_p, log_q = F.softmax(8 * c, 1), F.log_softmax(8 * c, 1), F.log_softmax(8 * c_adv, 1)
    kappa = p * (log_p - log_q)
    kl = F.kl_div(log_q, p, reduction="none").sum(1)  # KL(P ‖ Q), an independent route
    torch.testing.assert_close(pair_consistency(c, c_adv, n=0.3, s=8.0), kappa.pow(2).sum(1) + 0.3 * kl)


class Fixed(nn.Module):
    """Returns s·c for the clean marker input (0) and s·c' for the adversarial one (1)."""

    def __init__(self, s=8.0):
        super().__init__()
        self.gain = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.table = {0: s * C, 1: s * C_ADV}

    def forward(self, x):
        return self.gain * self.table[int(x.flatten()[0])]


def test_objective_is_acc_plus_beta_rob_on_hand_values():
    x, x_adv = torch.zeros(2, 1), torch.ones(2, 1)
    loss, metrics = methods.create("spat").objective(Fixed(), x, x_adv, Y)
    z = [[2.8, 0.64, -0.08], [0.24, 2.16, 1.2]]  # the modulated logits of the first test
    acc = sum(-math.log(softmax(row)[y]) for row, y in zip(z, (0, 1))) / 2
    rob = sum(rob_by_hand(C[i].tolist(), C_ADV[i].tolist(), 0.2, 8.0) for i in range(2)) / 2
    assert metrics["loss_acc"].item() == pytest.approx(acc, rel=1e-10)
    assert metrics["loss_rob"].item() == pytest.approx(rob, rel=1e-10)
    assert loss.item() == pytest.approx(acc + 6 * rob, rel=1e-10)
    assert all(not v.requires_grad and v.dim() == 0 for v in metrics.values())


def test_defaults_are_the_papers():
    hp = methods.create("spat").hparams()
    assert (hp["beta"], hp["m"], hp["n"], hp["s"], hp["detach_factors"]) == (6.0, 0.2, 0.2, 8.0, False)
    assert methods.head_of("spat") == "cosine"
    assert methods.readouts_of("spat") == ("hard_pairs", "adv_confusion")


# ---------------------------------------------------------------- gradient through the factors


@pytest.mark.parametrize("detach", [False, True])
def test_accuracy_loss_gradient_through_the_factors(detach):
    c = C.clone().requires_grad_()
    z = modulated_logits(c, Y, m=0.2, s=8.0, detach_factors=detach)
    (grad,) = torch.autograd.grad(F.cross_entropy(z, Y, reduction="sum"), c)
    # dCE/dz = softmax(z) − onehot; dz/dc is s·factor when the factor is a constant weight, and
    # s·(1 + m − 2c_y) / s·(2c_j + m) when the gradient also flows through the factor
    target = F.one_hot(Y, 3).bool()
    dz = torch.where(target, 8 * (1.2 - C), 8 * (C + 0.2)) if detach else \
        torch.where(target, 8 * (1.2 - 2 * C), 8 * (2 * C + 0.2))
    torch.testing.assert_close(grad, (F.softmax(z.detach(), 1) - target.double()) * dz)


@pytest.mark.parametrize("detach", [False, True])
def test_robust_loss_gradient_through_the_factors(detach):
    c_adv = C_ADV.clone().requires_grad_()
    (grad,) = torch.autograd.grad(pair_consistency(C, c_adv, n=0.2, s=8.0, detach_factors=detach).sum(), c_adv)
    # Σ_k w_k·P_k(log P_k − log Q_k) with weights w held fixed has gradient s·(Q_j·Σ_k w_k P_k − w_j P_j)
    # in c'_j; the weight is κ + n when the factor is detached and 2κ + n (product rule) otherwise
    p, q = F.softmax(8 * C, 1), F.softmax(8 * C_ADV, 1)
    kappa = p * (F.log_softmax(8 * C, 1) - F.log_softmax(8 * C_ADV, 1))
    w = kappa + 0.2 if detach else 2 * kappa + 0.2
    torch.testing.assert_close(grad, 8 * (q * (w * p).sum(1, keepdim=True) - w * p))


@pytest.mark.parametrize("detach", [False, True])
def test_both_sides_and_the_head_receive_gradient(detach):
    torch.manual_seed(0)
    model = create("small-cnn", head="cosine", scale=8.0, in_channels=1, image_size=28).eval()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    x_adv = (x.detach() + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_()
    loss, _ = methods.create("spat", detach_factors=detach).objective(model, x, x_adv, torch.tensor([0, 1, 2, 3]))
    gx, gadv, gw = torch.autograd.grad(loss, [x, x_adv, model.head.weight])
    assert gx.abs().sum() > 0 and gadv.abs().sum() > 0 and gw.abs().sum() > 0


def test_detaching_the_factors_changes_the_gradient_not_the_value():
    torch.manual_seed(0)
    model = create("small-cnn", head="cosine", scale=8.0, in_channels=1, image_size=28).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    out = {}
    for detach in (False, True):
        loss, _ = methods.create("spat", detach_factors=detach).objective(model, x, x_adv, y)
        out[detach] = loss.detach(), torch.autograd.grad(loss, model.head.weight)[0]
    torch.testing.assert_close(out[False][0], out[True][0])
    assert not torch.allclose(out[False][1], out[True][1])


# -------------------------------------------------------------------- the head and its scale


def test_config_sets_the_head_scale_to_s_and_the_model_outputs_s_times_cosines():
    cfg = config.load(None, ["--method=spat", "--method.s=5", "--data.dataset=mnist", "--model.arch=small-cnn"])
    assert cfg.model.head_args == {"scale": 5.0}
    from advrep.data import info

    model = build_model(config.resolve(cfg, info("mnist")).model, info("mnist")).eval()
    assert isinstance(model.head, CosineHead) and model.head.scale == 5.0
    x = torch.rand(3, 1, 28, 28)
    h, logits = model.forward_features(x)
    w, b = model.head.weight, model.head.bias
    cos = F.normalize(h, dim=1) @ F.normalize(w, dim=1).T + b  # c_j = ĥ·ŵ_j + b_j
    torch.testing.assert_close(logits, 5.0 * cos)


def test_a_different_head_scale_is_an_error():
    with pytest.raises(ConfigError, match="model.head_args.scale must equal method.s = 8.0, got 4"):
        config.load(None, ["--method=spat", "--model.head_args={scale: 4}"])
    with pytest.raises(ConfigError, match="needs model.head=cosine"):
        config.load(None, ["--method=spat", "--model.head=linear"])
    model = create("small-cnn", head="cosine", scale=1.0, in_channels=1, image_size=28)
    with pytest.raises(ConfigError, match="scale to equal method.s = 8.0, got 1.0"):
        methods.create("spat").perturb(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]),
                                       Threat(eps=0.3, step_size=0.1, steps=1))


def test_projection_keeps_unit_rows_with_no_gradient_through_it():
    torch.manual_seed(0)
    model = create("small-cnn", head="cosine", scale=8.0, in_channels=1, image_size=28).eval()
    head = model.head
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.5, 2.0, 10)[:, None])  # rows off the sphere
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    loss, _ = methods.create("spat").objective(model, x, x_adv, y)
    (grad,) = torch.autograd.grad(loss, head.weight)
    # through F.normalize the gradient would be orthogonal to each row; straight through it is
    # the gradient with respect to the unit rows, which has a radial part
    assert (grad * head.weight).sum(1).abs().max() > 1e-4
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    opt.register_step_post_hook(lambda *_: head.project_())  # as the trainer does
    head.weight.grad = grad
    opt.step()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10, dtype=head.weight.dtype))


# ------------------------------------------------------------------------------ the attack


class Counting(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.modes = net, 0, []

    def forward(self, x):
        self.calls += 1
        self.modes.append(self.training)
        return self.net(x)


def test_attack_maximizes_per_sample_rob_against_a_fixed_clean_side(monkeypatch):
    torch.manual_seed(0)
    model = Counting(create("small-cnn", head="cosine", scale=8.0, in_channels=1, image_size=28)).train()
    x, y = torch.rand(3, 1, 28, 28), torch.tensor([0, 1, 2])
    seen = {}
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: seen.update(k) or x)
    methods.create("spat").perturb(model, x, y, Threat(eps=0.3, step_size=0.1, steps=2))
    assert seen["random_start"] == "normal" and seen.get("init_std", 0.001) == 0.001
    assert (seen["eps"], seen["step_size"], seen["steps"]) == (0.3, 0.1, 2)
    assert model.modes == [False], "clean side computed once, with eval-mode BatchNorm"
    with torch.no_grad():
        clean = (model.net.eval()(x) / 8).tolist()
    logits_adv = torch.randn(3, 10, dtype=torch.float64)
    value = seen["loss"](logits_adv, y)
    assert model.calls == 1, "the attack objective reuses the clean side"
    expected = [rob_by_hand(clean[i], (logits_adv[i] / 8).tolist(), 0.2, 8.0) for i in range(3)]
    assert value.shape == (3,) and value.tolist() == pytest.approx(expected, rel=1e-5)


def test_attack_increases_the_robust_loss():
    torch.manual_seed(0)
    model = create("small-cnn", head="cosine", scale=8.0, in_channels=1, image_size=28).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    method = methods.create("spat")
    x_adv = method.perturb(model, x, y, Threat(eps=0.3, step_size=0.05, steps=5))
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6
    with torch.no_grad():
        c = model(x) / 8
        start = pair_consistency(c, model((x + 0.001 * torch.randn_like(x)).clamp(0, 1)) / 8, 0.2, 8.0)
        end = pair_consistency(c, model(x_adv) / 8, 0.2, 8.0)
    assert end.mean() > 10 * start.mean()


# ---------------------------------------------------------------------------- read-outs


def test_hardest_pairs_on_known_scores():
    scores = torch.tensor([[0.9, 0.5, 0.1],   # class 0: mean score of 1 is 0.4, of 2 is 0.05
                           [0.8, 0.3, 0.0],
                           [0.2, 0.9, 0.7],   # class 1: mean of 0 is 0.4, of 2 is 0.5, although
                           [0.6, 0.4, 0.3],   # this image alone is closest to 0
                           [0.1, 0.2, 0.3]])  # class 2: mean of 0 is 0.1, of 1 is 0.2
    y = torch.tensor([0, 0, 1, 1, 2])
    pairs = hardest_pairs(scores, y, top=3)
    assert [(p["true"], p["confused"], p["n"]) for p in pairs] == [(1, 2, 2), (0, 1, 2), (2, 1, 1)]
    assert [p["score"] for p in pairs] == pytest.approx([0.5, 0.4, 0.2])
    assert [p["true"] for p in hardest_pairs(scores, y, top=2)] == [1, 0]
    absent = hardest_pairs(torch.rand(2, 4), torch.tensor([3, 3]))
    assert [p["true"] for p in absent] == [3], "classes without images are not listed"


class Pixels(nn.Module):
    """A "network" whose features are its input pixels (3 channels, 1×1): predictions known by hand."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward_features(self, x):
        h = x.flatten(1)
        return h, self.head(h)

    def forward(self, x):
        return self.forward_features(x)[1]


def probe(model, x_adv=None):
    x = torch.tensor([[200, 100, 0], [0, 100, 100], [10, 0, 200]], dtype=torch.uint8).view(3, 3, 1, 1)
    adv = x.float().div(255) if x_adv is None else x_adv
    return Probe(model, x, torch.tensor([0, 1, 2]), norm="Linf", eps=0.3, step_size=0.1, steps=1,
                 device="cpu", x_adv=adv)


def test_hard_pairs_on_a_cosine_head_reads_cosines():
    head = CosineHead(3, 3, scale=8.0)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))  # c = unit feature vector, zero bias
    out = run(["hard_pairs"], probe(Pixels(head)))["hard_pairs"]
    # cosines: (2,1,0)/√5 -> rival 1 at 1/√5; (0,1,1)/√2 -> rival 2 at 1/√2; (10,0,200)/√40100 -> rival 0
    assert out["score"] == "cosine"
    assert [(p["true"], p["confused"]) for p in out["pairs"]] == [(1, 2), (0, 1), (2, 0)]
    assert [p["score"] for p in out["pairs"]] == pytest.approx(
        [1 / math.sqrt(2), 1 / math.sqrt(5), 10 / math.sqrt(40100)], abs=1e-4)


def test_hard_pairs_on_any_other_head_reads_softmax():
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(4 * torch.eye(3))  # logits = 4·pixels
    out = run(["hard_pairs"], probe(Pixels(head)))["hard_pairs"]
    rows = [[4 * v / 255 for v in r] for r in ([200, 100, 0], [0, 100, 100], [10, 0, 200])]
    expected = {(0, 1): softmax(rows[0])[1], (1, 2): softmax(rows[1])[2], (2, 0): softmax(rows[2])[0]}
    assert out["score"] == "softmax"
    assert {(p["true"], p["confused"]): p["score"] for p in out["pairs"]} == pytest.approx(expected, abs=1e-4)
    assert [p["score"] for p in out["pairs"]] == sorted((p["score"] for p in out["pairs"]), reverse=True)


def test_adv_confusion_counts_the_predictions_under_attack_and_plots_them():
    import matplotlib

    matplotlib.use("Agg")
    head = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(3))  # prediction = brightest channel
    x_adv = torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.8, 0.1], [0.7, 0.0, 0.2]]).view(3, 3, 1, 1)  # 0->1, 1->1, 2->0
    out = run(["adv_confusion"], probe(Pixels(head), x_adv))["adv_confusion"]
    assert out["matrix"] == [[0, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert out["accuracy"] == pytest.approx(1 / 3)
    fig = plot_confusion(out)
    ax, bar = fig.axes  # the matrix and its colour bar
    assert ax.get_xlabel() and ax.get_ylabel() and "PGD" in ax.get_title() and bar.get_ylabel()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    assert buf.getvalue()[:4] == b"\x89PNG" and len(buf.getvalue()) < 100_000


def test_trades_can_log_the_same_readouts():
    cfg = config.load(None, ["--method=trades", "--train.readouts=[hard_pairs,adv_confusion]",
                             "--eval.readouts=[hard_pairs,adv_confusion]"])
    assert cfg.train.readouts == ["hard_pairs", "adv_confusion"]


@pytest.mark.parametrize("setting", ["cifar10-resnet18", "cifar10-wrn-34-10", "mnist-small-cnn"])
def test_recipes_load_with_the_papers_settings(setting):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / f"spat-{setting}.yaml"
    cfg = config.load(path)
    assert path.read_text().startswith("# SPAT (Hou, Han, Li")
    assert cfg.method["name"] == "spat" and cfg.model.head == "cosine" and cfg.model.head_args == {"scale": 8.0}
    assert (cfg.method["beta"], cfg.method["m"], cfg.method["n"], cfg.method["s"]) == (6.0, 0.2, 0.2, 8.0)
    if setting == "cifar10-wrn-34-10":
        assert (cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay) == (100, 0.1, 2e-4)


def test_training_step_updates_batchnorm_clean_then_adversarial_as_spat_loss():
    """The released ``spat_loss`` runs two training-mode passes after its eval-mode attack,
    ``model(x_natural)`` then ``model(x_adv)``, and no second clean pass (unlike TRADES'
    ``trades_loss``): BatchNorm's running statistics move clean, then adversarial, once each."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.3), nn.ReLU(),
                        nn.Linear(3, 10)).train()
    x, x_adv, y = torch.randn(6, 4), torch.randn(6, 4) + 1.0, torch.tensor([0, 1, 2, 3, 4, 5])
    methods.create("spat").objective(net, x, x_adv, y)
    bn = net[2]
    assert bn.num_batches_tracked.item() == 2
    by_hand = torch.zeros(3)
    for b in (x, x_adv):  # momentum 0.3 from mean 0, in the code's order
        by_hand = 0.7 * by_hand + 0.3 * net[1](b).mean(0).detach()
    torch.testing.assert_close(bn.running_mean, by_hand)
