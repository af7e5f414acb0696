"""Adv-DPNP and DPNP: the dual-branch gradient flow, the prototype sphere, every loss term on
hand-checkable tensors (expected values written out here, independently of the method's code),
the nearest-rival choice, the geometry read-out, the options and the recipes."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import config, methods, models, readouts
from advrep.cli import main
from advrep.errors import ConfigError
from advrep.factory import model_from_checkpoint
from advrep.methods.base import Passes
from advrep.models.heads import LinearHead, PrototypeHead
from advrep.threat import Threat

ROOT = Path(__file__).resolve().parents[1]


def prototype_cnn(alpha=4.0):
    torch.manual_seed(0)
    return models.create("small-cnn", num_classes=10, head="prototype", in_channels=1, image_size=28, alpha=alpha)


@pytest.fixture
def batch():
    torch.manual_seed(2)
    return torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))


# ------------------------------------------------------------------------ gradient flow


def test_adversarial_branch_alone_gives_prototypes_exactly_zero_gradient(batch):
    x, y = batch
    model = prototype_cnn().eval()
    x_adv = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    method = methods.create("adv-dpnp")
    adv_loss, _ = method.adversarial_branch(Passes(model, x, x_adv), y)
    adv_loss.backward()
    proto = model.head.weight.grad
    assert proto is None or torch.count_nonzero(proto) == 0
    for name, param in model.named_parameters():
        if name != "classifier.fc3.weight":
            assert param.grad is not None and param.grad.abs().sum() > 0, name
    # the clean branch does move the prototypes, and the total moves them by exactly as much
    model.zero_grad()
    method.clean_branch(Passes(model, x, x_adv), y)[0].backward()
    clean_grad = model.head.weight.grad.clone()
    assert clean_grad.abs().sum() > 0
    model.zero_grad()
    method.objective(model, x, x_adv, y)[0].backward()
    assert torch.equal(model.head.weight.grad, clean_grad)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_every_prototype_has_norm_alpha_after_every_optimizer_step(batch, optimizer):
    x, y = batch
    alpha = 2.5
    model = prototype_cnn(alpha).train()
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    method = methods.create("adv-dpnp")
    start = model.head.prototypes().detach().clone()
    for _ in range(3):
        x_adv = method.perturb(model, x, y, Threat(eps=0.3, step_size=0.15, steps=1))
        loss, _ = method.objective(model, x, x_adv, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        norms = model.head.prototypes().norm(dim=1)
        assert torch.allclose(norms, torch.full((10,), alpha), atol=1e-5)
    assert not torch.allclose(model.head.prototypes(), start), "the prototypes must have moved"


def test_prototype_softmax_equals_nearest_prototype_softmax():
    torch.manual_seed(1)
    head = PrototypeHead(6, 5, alpha=3.0)
    h = 2 * torch.randn(7, 6)
    c = 3.0 * head.weight / head.weight.norm(dim=1, keepdim=True)
    sq_dist = ((h[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    assert torch.allclose(F.softmax(head(h), 1), F.softmax(-0.5 * sq_dist, 1), atol=1e-6)


# ------------------------------------------------------------- terms on hand tensors


class HandModel(nn.Module):
    """Features = ``scale · x`` for 2-d inputs, read by a prototype head with hand-set rows."""

    def __init__(self, rows, alpha):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.classifier = PrototypeHead(2, len(rows), alpha=alpha).double()
        with torch.no_grad():
            self.classifier.weight.copy_(torch.tensor(rows, dtype=torch.float64))

    @property
    def head(self):
        return self.classifier

    def forward_features(self, x):
        h = self.scale * x
        return h, self.head(h)

    def forward(self, x):
        return self.forward_features(x)[1]


def softmax_row(z):
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def hand_setup():
    # prototypes (alpha = 2): c0 = (2, 0), c1 = (0, 2), c2 = (-2, 0); rows given at other lengths
    model = HandModel([[5.0, 0.0], [0.0, 0.5], [-1.0, 0.0]], alpha=2.0)
    h = torch.tensor([[1.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    h_adv = torch.tensor([[2.0, -1.0], [1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    return model, h, h_adv, y


def test_clean_branch_terms_match_their_formulas():
    model, h, h_adv, y = hand_setup()
    method = methods.create("dpnp", lambda_pos=0.3, lambda_neg=0.7)
    loss, m = method.objective(model, h, h, y)
    # logits h·c: sample 0: (2, 2, -2), sample 1: (1, 6, -1)
    ce = -(math.log(softmax_row([2, 2, -2])[0]) + math.log(softmax_row([1, 6, -1])[1])) / 2
    # ‖h − c_y‖²: (1−2)² + 1² = 2 and 0.5² + (3−2)² = 1.25; mean over 2 samples, / d = 2
    pos = (2 + 1.25) / 2 / 2
    # nearest rival: sample 0 (class 0): c1 at distance² 2, c2 at 10 -> c1, cos = 2 / (√2·2);
    # sample 1 (class 1): c0 at 1.5² + 9 = 11.25, c2 at 2.5² + 9 = 15.25 -> c0, cos = 1 / (√9.25·2)
    neg = (2 / (math.sqrt(2) * 2) + 1 / (math.sqrt(9.25) * 2)) / 2
    assert m["loss_ce"].item() == pytest.approx(ce, rel=1e-12)
    assert m["loss_pos"].item() == pytest.approx(pos, rel=1e-12)
    assert m["loss_neg"].item() == pytest.approx(neg, rel=1e-12)
    assert loss.item() == pytest.approx(ce + 0.3 * pos + 0.7 * neg, rel=1e-12)


def test_adversarial_branch_terms_match_their_formulas():
    model, h, h_adv, y = hand_setup()
    method = methods.create("adv-dpnp", lambda_pos=0.3, lambda_neg=0.7, lambda_cons=2.0)
    loss, m = method.objective(model, h, h_adv, y)
    clean_total = methods.create("dpnp", lambda_pos=0.3, lambda_neg=0.7).objective(model, h, h, y)[0].item()
    # adversarial logits h'·c: sample 0: (4, -2, -4), sample 1: (2, 4, -2)
    ce_adv = -(math.log(softmax_row([4, -2, -4])[0]) + math.log(softmax_row([2, 4, -2])[1])) / 2
    # ‖h' − c_y‖²: 0² + 1² = 1 and 1² + 0² = 1
    pos_adv = (1 + 1) / 2 / 2
    kl = 0.0
    for clean, adv in (([2, 2, -2], [4, -2, -4]), ([1, 6, -1], [2, 4, -2])):
        p, q = softmax_row(clean), softmax_row(adv)
        kl += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    cons = kl / 2
    assert m["loss_ce_adv"].item() == pytest.approx(ce_adv, rel=1e-12)
    assert m["loss_pos_adv"].item() == pytest.approx(pos_adv, rel=1e-12)
    assert m["loss_cons"].item() == pytest.approx(cons, rel=1e-12)
    assert loss.item() == pytest.approx(clean_total + ce_adv + 0.3 * pos_adv + 2.0 * cons, rel=1e-12)
    assert m["acc_adv"].item() == 1.0


def test_nearest_rival_skips_the_own_class_and_takes_the_closest_other():
    from advrep.methods.adv_dpnp import nearest_rival

    centres = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [0.0, -3.0]])
    points = torch.tensor([[0.1, 0.0], [0.1, 0.0], [4.0, 0.0], [0.0, -1.9]])
    own = torch.tensor([0, 1, 1, 0])
    # nearest overall is the own class for rows 0 and 2; row 3 is nearer c0 (own) than c3
    assert nearest_rival(points, centres, own).tolist() == [1, 0, 2, 3]


def test_prototype_mode_repels_each_prototype_from_its_nearest_rival():
    # prototypes at 0°, 30° and 180° on a circle of radius 3: rivals 1, 0 and 1 (150° < 180°)
    angles = [0.0, math.pi / 6, math.pi]
    model = HandModel([[math.cos(a), math.sin(a)] for a in angles], alpha=3.0)
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    _, m = methods.create("dpnp", neg="prototype").objective(model, h, h, torch.tensor([0]))
    expected = (math.cos(math.pi / 6) * 2 + math.cos(5 * math.pi / 6)) / 3
    assert m["loss_neg"].item() == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------ the read-out


def synthetic_probe(model, h, h_adv, y):
    n = len(y)
    probe = readouts.Probe(model, torch.zeros(n, 1, 2, 2, dtype=torch.uint8), y, norm="Linf", eps=0.1,
                           step_size=0.1, steps=1, device="cpu")
    probe.__dict__["clean"] = (h, torch.zeros(n, 3))
    probe.__dict__["adv"] = (h_adv, torch.zeros(n, 3))
    return probe


def test_geometry_readout_with_prototypes():
    model = HandModel([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], alpha=2.0).float()
    h = torch.tensor([[3.0, 0.0], [0.0, 1.0]])  # distance 1 to c0 = (2, 0), 1 to c1 = (0, 2)
    h_adv = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # distance 2 to own; rival c1 at 2, c0 at 2
    out = readouts.run(["prototype_geometry"], synthetic_probe(model, h, h_adv, torch.tensor([0, 1])))
    g = out["prototype_geometry"]
    assert g["class_vectors"] == "prototypes"
    assert g["min_angle_deg"] == pytest.approx(90.0)
    assert g["intra"] == pytest.approx(1.0) and g["intra_adv"] == pytest.approx(2.0)
    # clean rivals: sample 0 -> c1 at √(9 + 4); sample 1 -> c0 or c2 at √(4 + 1)
    assert g["margin"] == pytest.approx((math.sqrt(13) - 1 + math.sqrt(5) - 1) / 2)
    assert g["margin_adv"] == pytest.approx(0.0, abs=1e-6)
    assert g["margin_rel"] == pytest.approx(((math.sqrt(13) - 1) / (math.sqrt(13) + 1)
                                             + (math.sqrt(5) - 1) / (math.sqrt(5) + 1)) / 2)
    # mean distance between the three prototypes: (√8 + 4 + √8) / 3
    assert g["intra_rel"] == pytest.approx(1.0 / ((2 * math.sqrt(8) + 4) / 3))
    json.dumps(out)


def test_geometry_readout_on_a_linear_head_uses_the_class_means():
    class LinearModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = LinearHead(2, 3)

    h = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])  # means (2, 0) and (0, 2); class 2 absent
    y = torch.tensor([0, 0, 1, 1])
    g = readouts.run(["prototype_geometry"], synthetic_probe(LinearModel(), h, h, y))["prototype_geometry"]
    assert g["class_vectors"] == "class-means"
    assert g["min_angle_deg"] == pytest.approx(90.0)
    assert g["intra"] == pytest.approx(1.0)
    assert g["margin"] == pytest.approx((math.sqrt(5) + math.sqrt(13)) / 2 - 1)
    assert g["intra_rel"] == pytest.approx(1 / math.sqrt(8))


# ------------------------------------------------------------------ options and config


def test_options_are_validated():
    with pytest.raises(ConfigError, match="valid values: sample, prototype"):
        methods.create("adv-dpnp", neg="nearest")
    with pytest.raises(ConfigError, match="valid values: ce, kl"):
        methods.create("adv-dpnp", attack="cw")
    with pytest.raises(ConfigError, match="method.lambda_cons must be >= 0"):
        methods.create("adv-dpnp", lambda_cons=-1)
    with pytest.raises(ConfigError, match="unknown config key 'method.lambda_cons'"):
        methods.create("dpnp", lambda_cons=1.0)
    with pytest.raises(ConfigError, match="needs model.head=prototype, got 'linear'"):
        config.load(None, ["--method=adv-dpnp", "--model.head=linear"])
    assert methods.head_of("adv-dpnp") == methods.head_of("dpnp") == "prototype"


@pytest.mark.parametrize("attack,loss,start", [("ce", "ce", "uniform"), ("kl", "kl", "normal")])
def test_attack_option(batch, monkeypatch, attack, loss, start):
    x, y = batch
    seen = {}
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: seen.update(k) or x)
    methods.create("adv-dpnp", attack=attack).perturb(prototype_cnn(), x, y, Threat())
    assert seen["loss"] == loss and seen["random_start"] == start
    assert methods.create("dpnp").perturb(prototype_cnn(), x, y, Threat()) is x


SETTINGS = [f"{d}-{a}" for d in ("cifar10", "cifar100", "svhn") for a in ("resnet18", "wrn-34-10")] + ["mnist-small-cnn"]


@pytest.mark.parametrize("method", ["adv-dpnp", "dpnp"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_recipes(method, setting):
    path = ROOT / "configs" / f"{method}-{setting}.yaml"
    cfg = config.load(path)
    assert path.read_text().startswith("# ") and cfg.method["name"] == method
    assert cfg.model.head in (None, "prototype") and set(cfg.model.head_args) == {"alpha"}
    if setting.startswith("svhn"):
        assert cfg.train.lr == 0.01 and cfg.threat.step_size == pytest.approx(1 / 255)


@pytest.mark.slow
def test_a_run_logs_the_geometry_and_keeps_alpha(tmp_path, shared):
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--config", str(ROOT / "configs" / "adv-dpnp-mnist-small-cnn.yaml"),
                 "--data-dir", str(shared("mnist")), "--out", str(run), "--model.head_args={alpha: 2.5}",
                 "--data.train_subset=128", "--data.val_size=32", "--train.epochs=1", "--train.batch_size=64",
                 "--threat.steps=2", "--threat.step_size=0.15", "--train.val_steps=2", "--eval.n=32",
                 "--eval.attacks=[pgd]", "--eval.pgd_steps=2", "--eval.checks=false",
                 "--eval.corruptions=none"]) == 0
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["readouts"]["prototype_geometry"]["class_vectors"] == "prototypes"
    assert {"loss_pos", "loss_neg", "loss_cons", "loss_ce_adv"} <= set(row)
    assert "prototype_geometry" in json.loads((run / "report.json").read_text())["readouts"]
    model, _ = model_from_checkpoint(run / "last", "cpu")
    assert model.head.alpha == 2.5
    assert torch.allclose(model.head.prototypes().norm(dim=1), torch.full((10,), 2.5), atol=1e-5)


@pytest.mark.slow
def test_a_checkpoint_records_the_heads_resolved_alpha(tmp_path, shared):
    """A run that leaves alpha at its default stores the value in the checkpoint, so the model
    reloads with the alpha it was trained with even if the default changes later."""
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--method=dpnp", "--dataset=mnist", "--model.arch=small-cnn",
                 "--data-dir", str(shared("mnist")), "--out", str(run),
                 "--data.train_subset=64", "--data.val_size=0", "--train.epochs=1", "--eval.after_train=false"]) == 0
    meta = json.loads((run / "last.json").read_text())
    assert meta["head"] == "prototype" and meta["head_args"] == {"alpha": 1.0}
