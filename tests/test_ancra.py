"""ANCRA: the ANC value on hand-made probability tables, its stop-gradient, the negatives and
their targeted attack, reverse attention's channel weighting and label selection, that no attack
advrep runs against an RA model sees the true label, RA off = the plain model, the auxiliary
losses, and a checkpoint with RA that reloads with RA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import attacks, config, evaluation, methods, models
from advrep.config import EvalConfig, ThreatConfig
from advrep.data import info
from advrep.errors import ConfigError
from advrep.factory import build_model, model_from_checkpoint
from advrep.methods.anc import Anc, anc_value, pick_negatives
from advrep.methods.base import Passes
from advrep.models import ra
from advrep.models.wide_resnet import WideResNet
from advrep.threat import Threat
from conftest import train

ROOT = Path(__file__).resolve().parents[1]


def logits_of(probs) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (float64 leaves, so gradients can be read)."""
    return torch.tensor(probs, dtype=torch.float64).log().requires_grad_(True)


# ------------------------------------------------------------------------- the ANC value

ANCHOR = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.4, 0.35, 0.25]]
NEGATIVE = [[0.5, 0.4, 0.1], [0.6, 0.3, 0.1], [0.05, 0.15, 0.8], [0.3, 0.6, 0.1]]
# top classes: anchor 0, 1, 2, 0; negative 0, 0, 2, 1 -> rows 0 and 2 share their top class


def test_anc_value_on_a_hand_made_table():
    value, match = anc_value(logits_of(ANCHOR), logits_of(NEGATIVE))
    expected = (math.sqrt(0.6 * 0.5) + math.sqrt(0.7 * 0.8)) / 4
    assert value.item() == pytest.approx(expected, rel=1e-12)
    assert match.item() == pytest.approx(0.5) and not match.requires_grad


def test_anc_value_is_zero_when_no_top_class_agrees():
    negative = [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
    anchor, neg = logits_of(ANCHOR), logits_of(negative)
    value, match = anc_value(anchor, neg)
    assert value.item() == 0.0 and match.item() == 0.0
    (g,) = torch.autograd.grad(value, neg)
    assert torch.count_nonzero(g) == 0


def test_no_gradient_reaches_the_anchor_side():
    anchor, neg = logits_of(ANCHOR), logits_of(NEGATIVE)
    value, _ = anc_value(anchor, neg)
    g_anchor, g_neg = torch.autograd.grad(value, [anchor, neg], allow_unused=True)
    assert g_anchor is None, "sg(v): the clean anchor is frozen"
    assert g_neg[[0, 2]].abs().sum() > 0 and torch.count_nonzero(g_neg[[1, 3]]) == 0
    # d/du sqrt(v·u) = sqrt(v)/(2 sqrt(u)), through the softmax: row 0, logit 0 = u·(1 − u)·that / B
    u, v = 0.5, 0.6
    assert g_neg[0, 0].item() == pytest.approx(math.sqrt(v) / (2 * math.sqrt(u)) * u * (1 - u) / 4)


def test_alpha_below_one_adds_the_code_s_reverse_side():
    anchor, neg = logits_of(ANCHOR), logits_of(NEGATIVE)
    value, _ = anc_value(anchor, neg, alpha=0.25)
    sym = (math.sqrt(0.6 * 0.5) + math.sqrt(0.7 * 0.8)) / 4  # same number both ways, other stop-gradient
    assert value.item() == pytest.approx(sym)
    g_anchor, g_neg = torch.autograd.grad(value, [anchor, neg])
    # the anchor side carries weight 1 − alpha = 0.75, the negative side alpha = 0.25
    assert g_anchor[0, 0].item() == pytest.approx(0.75 * math.sqrt(0.5) / (2 * math.sqrt(0.6)) * 0.6 * 0.4 / 4)
    assert g_neg[0, 0].item() == pytest.approx(0.25 * math.sqrt(0.6) / (2 * math.sqrt(0.5)) * 0.5 * 0.5 / 4)


def test_an_anchor_without_negative_counts_zero():
    valid = torch.tensor([True, True, False, True])
    value, match = anc_value(logits_of(ANCHOR), logits_of(NEGATIVE), valid)
    assert value.item() == pytest.approx(math.sqrt(0.6 * 0.5) / 4) and match.item() == 0.25


# ------------------------------------------------------------------------- the negatives


def test_random_negatives_have_another_label_and_are_uniform_over_classes_then_samples():
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2, 5])
    counts = torch.zeros(len(y), len(y))
    for _ in range(4000):
        index, valid = pick_negatives(y, 10)
        assert valid.all() and (y[index] != y).all()
        counts[torch.arange(len(y)), index] += 1
    freq = counts / 4000
    # anchor 4 (label 1): classes {0, 2, 5} present, 1/3 each; within class 0 four samples, 1/12 each
    assert freq[4, :4] == pytest.approx(torch.full((4,), 1 / 12), abs=0.02)
    assert freq[4, 5:7] == pytest.approx(torch.full((2,), 1 / 6), abs=0.025)
    assert freq[4, 7].item() == pytest.approx(1 / 3, abs=0.03)
    # anchor 0 (label 0): classes {1, 2, 5}; the single sample of class 1 comes 1/3 of the time
    assert freq[0, 4].item() == pytest.approx(1 / 3, abs=0.03)


def test_a_batch_of_one_class_has_no_negative():
    _, valid = pick_negatives(torch.tensor([3, 3, 3]), 10)
    assert not valid.any()


# Labels and eval-mode logits of a hand-made batch; predictions ŷ = [0, 1, 1, 0, 2, 2].
Y = torch.tensor([0, 0, 1, 1, 2, 2])
LOGITS = torch.tensor([[5.0, 1.0, 0.0],   # ŷ 0
                       [2.0, 4.0, 0.0],   # ŷ 1
                       [0.0, 3.0, 1.0],   # ŷ 1
                       [3.0, 2.0, 0.0],   # ŷ 0
                       [1.5, 0.0, 4.0],   # ŷ 2
                       [0.5, 0.0, 2.0]])  # ŷ 2


@pytest.mark.parametrize("strategy, expected", [
    # soft: another label and the same prediction; the largest logit of the anchor's class wins
    #   anchor 0 (y 0, ŷ 0): {3} -> 3; anchor 1 (y 0, ŷ 1): {2} -> 2; anchor 2 (y 1, ŷ 1): {1} -> 1;
    #   anchor 3 (y 1, ŷ 0): {0} -> 0; anchors 4, 5 (y 2, ŷ 2): none -> random
    ("soft", [3, 2, 1, 0, None, None]),
    # hard: another label, predicted as the anchor's label
    #   anchor 0, 1 (y 0): ŷ_j = 0 and y_j != 0: {3} -> 3; anchors 2, 3 (y 1): {1} -> 1;
    #   anchors 4, 5 (y 2): ŷ_j = 2 and y_j != 2: none -> random
    ("hard", [3, 3, 1, 1, None, None]),
    # easy: another label, predicted neither as the anchor's label nor as the anchor's prediction
    #   anchor 0 (y 0, ŷ 0): {2 (ŷ 1), 4, 5 (ŷ 2)}: logit 0 is 0.0, 1.5, 0.5 -> 4
    #   anchor 1 (y 0, ŷ 1): {4, 5} -> 4;  anchor 2 (y 1, ŷ 1): {0, 4, 5}: logit 1 is 1, 0, 0 -> 0
    #   anchor 3 (y 1, ŷ 0): {4, 5}: logit 1 is 0, 0 -> the first, 4
    #   anchors 4, 5 (y 2, ŷ 2): {0, 1, 2, 3}: logit 2 is 0, 0, 1, 0 -> 2
    ("easy", [4, 4, 0, 4, 2, 2]),
])
def test_logits_based_strategies_pick_what_the_code_picks(strategy, expected):
    torch.manual_seed(0)
    index, valid = pick_negatives(Y, 3, strategy, LOGITS)
    assert valid.all() and (Y[index] != Y).all()
    for i, e in enumerate(expected):
        if e is not None:
            assert index[i].item() == e, (strategy, i)


def test_logits_based_strategies_wait_for_random_steps(monkeypatch):
    term = Anc(strategy="hard", random_steps=2)
    term.attach(methods.create("pgd-at"))
    seen = []
    monkeypatch.setattr("advrep.methods.anc.pick_negatives",
                        lambda y, k, strategy, logits: (seen.append(strategy), pick_negatives(y, k))[1])
    model = small_model()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        term.value(Passes(model, x, x, y, Threat(eps=0.3, step_size=0.1, steps=1)), y)
    assert seen == ["random", "random", "hard"]


# --------------------------------------------------------------- the targeted negative attack


def small_model(ra_on=False) -> nn.Module:
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28)
    nn.init.normal_(model.head.weight, std=0.1)  # the reference zero head makes every logit equal
    return ra.enable(model) if ra_on else model


@pytest.fixture
def spy(monkeypatch):
    """Records every call of attacks.pgd with its arguments and result."""
    calls = []
    real = attacks.pgd

    def pgd(model, x, y, **kwargs):
        out = real(model, x, y, **kwargs)
        calls.append({"x": x, "y": y, "out": out, **kwargs})
        return out

    monkeypatch.setattr(attacks, "pgd", pgd)
    return calls


def test_the_negative_is_pulled_towards_the_anchor_label_by_targeted_pgd(spy):
    model = small_model().train()
    torch.manual_seed(1)
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    composite = methods.create("pgd-at+anc")
    term = composite.terms[0]
    passes = Passes(model, x, x, y, Threat(eps=0.3, step_size=0.05, steps=10))
    term.value(passes, y)
    (call,) = spy
    assert call["targeted"] and call["random_start"] == "normal" and call["loss"] == "ce"
    assert call["eps"] == 0.3 and call["steps"] == 10 and call["step_size"] == 0.05
    assert torch.equal(call["y"], y), "the target is the anchor's label"
    source = call["x"]
    assert (source.view(8, -1)[:, None] == x.view(8, -1)[None]).all(2).any(1).all(), "negatives come from the batch"
    assert model.training, "the attack restores the training mode"
    model.eval()
    with torch.no_grad():
        before = F.cross_entropy(model(source), y, reduction="none")
        after = F.cross_entropy(model(call["out"]), y, reduction="none")
    assert (call["out"] - source).abs().max() <= 0.3 + 1e-6
    assert (after < before - 0.2).all(), (before, after)


# ------------------------------------------------------------------------ reverse attention

# (architecture, constructor, first RA point, the module its weighted map feeds, final norm)
RA_ARCHS = {
    "resnet18": (lambda: models.create("resnet18", num_classes=10), "layer4.0", "layer4.1", None),
    "preact-resnet18": (lambda: models.create("preact-resnet18", num_classes=10), "layer4.0", "layer4.1", "bn"),
    "wrn-16-1": (lambda: WideResNet(16, 1, num_classes=10), "block3.layer.0", "block3.layer.1", "bn1"),
    "small-cnn": (lambda: models.create("small-cnn", num_classes=10, in_channels=1, image_size=28),
                  "classifier.relu1", "classifier.drop", None),
}


def _pair(arch):
    make, first, following, norm = RA_ARCHS[arch]
    torch.manual_seed(0)
    plain = make()
    if isinstance(plain.head, nn.Linear):
        nn.init.normal_(plain.head.weight, std=0.3)
    with_ra = make()
    with_ra.load_state_dict(plain.state_dict())
    return plain, ra.enable(with_ra), first, following, norm


def _capture(model, path, pre=False):
    store = {}
    module = model.get_submodule(path)
    if pre:
        module.register_forward_pre_hook(lambda _m, args: store.__setitem__("in", args[0]))
    else:
        module.register_forward_hook(lambda _m, _i, out: store.__setitem__("out", out))
    return store


@pytest.mark.parametrize("arch", list(RA_ARCHS))
@pytest.mark.parametrize("mode", ["train", "eval", "train-without-labels"])
def test_channel_weighting_uses_the_true_label_in_training_and_the_auxiliary_prediction_at_test(arch, mode):
    plain, model, first, following, norm = _pair(arch)
    if arch == "small-cnn":  # dropout would draw different masks in the two networks
        plain.classifier.drop.p = model.classifier.drop.p = 0.0
    plain.train(mode != "eval"), model.train(mode != "eval")
    channels = 1 if arch == "small-cnn" else 3
    size = 28 if arch == "small-cnn" else 32
    torch.manual_seed(3)
    x, y = torch.rand(4, channels, size, size), torch.tensor([7, 1, 4, 4])
    z_store = _capture(plain, first)
    in_store = _capture(model, following, pre=True)
    with torch.no_grad():
        plain(x)
        with ra.labels(model, None if mode == "train-without-labels" else y):
            h, logits = model.forward_features(x)
        z = z_store["out"]
        if norm:  # pre-activation networks: the final BN + ReLU, as in the authors' code
            z = F.relu(plain.get_submodule(norm)(z))
        W, b = model.head.weight, model.head.bias
        pooled = z.mean((2, 3)) if z.dim() == 4 else z
        a1 = pooled @ W.T + b
        j1 = y if mode == "train" else a1.argmax(1)
        shape = (4, -1, 1, 1) if z.dim() == 4 else (4, -1)
        assert torch.allclose(in_store["in"], z * W[j1].view(shape), atol=1e-5)
        a2 = h @ W.T + b
        j2 = y if mode == "train" else a2.argmax(1)
        assert torch.allclose(logits, (h * W[j2]) @ W.T + b, atol=1e-5)
        (h1, aux1), (h_last, aux2) = ra.auxiliary(model)
        assert torch.allclose(aux1, a1, atol=1e-5) and torch.allclose(h1, pooled, atol=1e-5)
        assert torch.equal(h_last, h) and torch.allclose(aux2, a2, atol=1e-5)
    if mode == "eval":  # a label context changes nothing at test time
        with torch.no_grad(), ra.labels(model, (y + 1) % 10):
            assert torch.equal(model(x), logits)


def test_ra_off_is_bit_identical_and_removable():
    cfg = config.resolve(config.load(None, ["--data.dataset=mnist", "--model.arch=small-cnn"]), info("mnist"))
    torch.manual_seed(0)
    plain = build_model(cfg.model, info("mnist"))
    torch.manual_seed(0)
    reference = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28)
    assert not ra.enabled(plain)
    for (k, a), (k2, b) in zip(plain.state_dict().items(), reference.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    model = small_model(ra_on=True)
    assert list(model.state_dict()) == list(small_model().state_dict()), "RA adds no weights"
    x = torch.rand(5, 1, 28, 28)
    ra.state(model).remove()
    assert not ra.enabled(model)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), small_model().eval()(x))


def test_the_objective_of_a_plain_model_is_the_base_loss_alone():
    model = small_model().eval()
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    x_adv = (x + 0.05).clamp(0, 1)
    method = methods.create("trades")
    loss, metrics = method.objective(model, x, x_adv, y)
    expected, _ = method.loss(Passes(model, x, x_adv), y)
    assert torch.equal(loss, expected) and "loss_ra" not in metrics


def test_ra_needs_the_linear_head_and_a_known_network():
    with pytest.raises(ConfigError, match="model.ra needs the linear head"):
        ra.enable(models.create("resnet18", head="cosine"))
    with pytest.raises(ConfigError, match="defined for resnet18, preact-resnet18"):
        ra.enable(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="already enabled"):
        ra.enable(small_model(ra_on=True))


# ----------------------------------------------------------- auxiliary losses in the objective


def test_the_objective_adds_cr_times_the_mean_auxiliary_loss():
    model = small_model(ra_on=True).eval()  # eval: no dropout, passes are repeatable
    torch.manual_seed(4)
    x, y = torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))
    x_adv = (x + 0.05).clamp(0, 1)
    method = methods.create("trades", beta=6.0)
    loss, metrics = method.objective(model, x, x_adv, y)
    with torch.no_grad():
        f, f_adv = model(x), model(x_adv)
        aux_clean = [a for _, a in (model(x), ra.auxiliary(model))[1]]
        aux_adv = [a for _, a in (model(x_adv), ra.auxiliary(model))[1]]

    def trades(a, b):
        return F.cross_entropy(a, y) + 6.0 * F.kl_div(F.log_softmax(b, 1), F.softmax(a, 1), reduction="batchmean")

    aux = sum(trades(a, b) for a, b in zip(aux_clean, aux_adv)) / 2
    assert len(aux_clean) == 2
    assert torch.allclose(loss, trades(f, f_adv) + 2.0 * aux, atol=1e-5)
    assert torch.allclose(metrics["loss_ra"], aux, atol=1e-5)


def test_anc_on_the_auxiliary_heads_uses_the_same_negative(monkeypatch):
    model = small_model(ra_on=True).eval()
    torch.manual_seed(5)
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    composite = methods.create("pgd-at+anc")
    term = composite.terms[0]
    made = []
    real = term._negatives_of
    monkeypatch.setattr(term, "_negatives_of", lambda p, yy: made.append(real(p, yy)) or made[-1])
    loss, metrics = composite.objective(model, x, x, y, Threat(eps=0.2, step_size=0.05, steps=3))
    (neg,) = made  # one negative attack and forward per step, shared by the auxiliary heads
    with torch.no_grad():
        f = model(x)
        aux = [a for _, a in ra.auxiliary(model)]
        main = F.cross_entropy(f, y) + 3.0 * anc_value(f, neg.logits, neg.valid)[0]
        extra = sum(F.cross_entropy(a, y) + 3.0 * anc_value(a, n, neg.valid)[0]
                    for a, (_, n) in zip(aux, neg.aux)) / 2
    assert torch.allclose(loss, main + 2.0 * extra, atol=1e-5)


# ------------------------------------------ every attack sees test-time label selection


@pytest.fixture
def selections(monkeypatch):
    """Records, for every RA weighting, whether the parameters were frozen (an attack's forward,
    see attacks.input_grad_only, which freezes them as on a compiled model here) and whether the
    true labels chose the rows."""
    import importlib

    monkeypatch.setattr(importlib.import_module("advrep.attacks.pgd"), "is_compiled", lambda model: True)
    seen = []
    real = ra.ReverseAttention._row

    def row(self, logits):
        seen.append({"attack": not self.model.head.weight.requires_grad,
                     "labels": self.model.training and self.labels is not None})
        return real(self, logits)

    monkeypatch.setattr(ra.ReverseAttention, "_row", row)
    return seen


@pytest.mark.parametrize("name", [f"{base}+anc" for base in methods.bases()])
@pytest.mark.parametrize("attack_bn", ["eval", "train"])
def test_training_attacks_never_see_the_true_label(selections, name, attack_bn):
    model = small_model(ra_on=True).train()
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    method = methods.create(name, attack_bn=attack_bn)
    threat = Threat(eps=0.2, step_size=0.05, steps=2)
    x_adv = method.perturb(model, x, y, threat)
    model.train()
    loss, _ = method.objective(model, x, x_adv, y, threat)
    loss.backward()
    attack = [s for s in selections if s["attack"]]
    training = [s for s in selections if not s["attack"]]
    assert len(attack) >= 2 * 2 * 2, "the base attack and the negative attack ran, two points each"
    assert not any(s["labels"] for s in attack), "an attack forward used the true labels"
    assert any(s["labels"] for s in training), "the training passes weight by the true labels"


@pytest.mark.slow
def test_evaluation_never_sees_the_true_label(selections):
    model = small_model(ra_on=True).eval()
    x, y = (torch.rand(12, 1, 28, 28) * 255).to(torch.uint8), torch.randint(0, 10, (12,))
    ev = EvalConfig(attacks=["fgsm", "pgd", "cw", "autoattack"], pgd_steps=3, pgd_step_size=0.1, cw_steps=3,
                    aa_version="custom", aa_attacks=["apgd-ce"], checks=True, checks_n=12, square_queries=20,
                    corruptions="none", batch_size=12)
    report = evaluation.evaluate(model, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=3), ev=ev,
                               device="cpu", progress=False)
    assert {"fgsm", "pgd", "cw", "autoattack", "ra-soft"} <= set(report["attacks"]) and "checks" in report
    assert any(s["attack"] for s in selections)
    assert selections and not any(s["labels"] for s in selections)


def test_soft_selection_mixes_the_rows_by_the_auxiliary_softmax_and_passes_gradient():
    """Inside ra.soft_selection the weighting rows are softmax(a/T)·W: at a tiny T they are the
    argmax rows (the model as deployed), at T = 1 the exact mix; and, unlike the argmax, the
    selection carries gradient from the logits back through the auxiliary prediction."""
    model = small_model(ra_on=True).eval()
    state = ra.state(model)
    a = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3]])
    w = model.head.weight
    assert torch.equal(state._row(a), w[[0]])
    with ra.soft_selection(model, temperature=1e-4):
        torch.testing.assert_close(state._row(a), w[[0]])
    with ra.soft_selection(model):
        torch.testing.assert_close(state._row(a), F.softmax(a, 1) @ w)
    assert state.soft is None, "the block restores the deployed selection"
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    with torch.no_grad():
        deployed = model(x)
    with ra.soft_selection(model, temperature=1e-4):
        torch.testing.assert_close(model(x), deployed, rtol=1e-4, atol=1e-4)
    (g_hard,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    with ra.soft_selection(model):
        (g_soft,) = torch.autograd.grad(model(x)[:, 0].sum(), x)
    assert not torch.allclose(g_hard, g_soft), "the soft selection adds the selection's gradient"


def test_evaluation_of_an_ra_model_adds_the_adaptive_attack_to_the_worst_case():
    model = small_model(ra_on=True).eval()
    x, y = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8), torch.randint(0, 10, (8,))
    ev = EvalConfig(attacks=["pgd"], pgd_steps=3, pgd_step_size=0.1, checks=False, corruptions="none")
    report = evaluation.evaluate(model, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=3), ev=ev,
                               device="cpu", progress=False)
    rows = report["attacks"]
    assert rows["ra-soft"]["label"] == "PGD-3 (RA soft selection)"
    assert rows["worst_case"]["correct"] <= min(rows["pgd"]["correct"], rows["ra-soft"]["correct"])
    plain = small_model().eval()
    report = evaluation.evaluate(plain, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=3), ev=ev,
                               device="cpu", progress=False)
    assert "ra-soft" not in report["attacks"]
    with pytest.raises(ConfigError, match="reverse attention"):
        evaluation.evaluate(plain, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=3),
                          ev=EvalConfig(attacks=["ra-soft"], checks=False, corruptions="none"), device="cpu",
                          progress=False)


def test_attack_aux_adds_the_auxiliary_losses_to_every_training_attack(spy):
    model = small_model(ra_on=True).eval()
    x, y = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    for aux_on in (True, False):
        spy.clear()
        method = methods.create("mart+anc", terms={"anc": {"attack_aux": aux_on}})
        method.perturb(model, x, y, Threat(eps=0.2, step_size=0.05, steps=2))
        (call,) = spy
        if not aux_on:
            assert call["loss"] == "ce"
            continue
        with torch.no_grad():
            f = model(x)
            aux = [a for _, a in ra.auxiliary(model)]
            got = call["loss"](f, y)
        expected = F.cross_entropy(f, y, reduction="none") + 2.0 * sum(
            F.cross_entropy(a, y, reduction="none") for a in aux) / 2
        assert torch.allclose(got, expected, atol=1e-6)


def test_base_attack_ce_is_the_code_s_attack(spy):
    model = small_model(ra_on=True).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    method = methods.create("trades+anc", terms={"anc": {"base_attack": "ce", "attack_aux": False}})
    method.perturb(model, x, y, Threat(steps=2))
    (call,) = spy
    assert call["loss"] == "ce" and call["random_start"] == "normal" and not call.get("targeted")


# ------------------------------------------------------------- runs, checkpoints, recipes

FEW = ["--data.train_subset=384", "--data.val_size=64", "--train.epochs=3", "--train.eps_warmup_epochs=0",
       "--threat.eps=0.1", "--threat.step_size=0.05", "--threat.steps=2", "--train.val_steps=2",
       "--eval.n=50", "--eval.attacks=[pgd]", "--eval.pgd_steps=3", "--eval.checks=false",
       "--eval.corruptions=none"]


@pytest.mark.slow
def test_an_ra_run_trains_and_its_checkpoint_reloads_with_ra(tmp_path, shared):
    run = tmp_path / "run"
    assert train("--data-dir", shared("mnist"), "--out", run, "--method=trades+anc", "--model.ra=true",
                 *FEW) == 0
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and "loss_ra" in rows[0] and "anc_value" in rows[0]
    assert json.loads((run / "best.json").read_text())["ra"] is True
    model, meta = model_from_checkpoint(run / "best", torch.device("cpu"))
    assert ra.enabled(model) and not model.training
    x = torch.rand(8, 1, 28, 28)
    plain = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28).eval()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(model(x), plain(x)), "RA changes the deployed model's output"
        assert torch.equal(model(x), ra.enable(plain)(x))
    report = json.loads((run / "report.json").read_text())
    assert report["method"] == "trades+anc"


@pytest.mark.slow
def test_a_checkpoint_without_the_ra_key_loads_without_ra(tmp_path, shared):
    run = tmp_path / "run"
    assert train("--data-dir", shared("mnist"), "--out", run, "--method=pgd-at", "--train.epochs=1",
                 *FEW[:1], "--data.val_size=0", "--threat.steps=1", "--eval.after_train=false") == 0
    meta = json.loads((run / "last.json").read_text())
    assert meta["ra"] is False
    del meta["ra"]
    (run / "last.json").write_text(json.dumps(meta))
    assert not ra.enabled(model_from_checkpoint(run / "last", torch.device("cpu"))[0])


@pytest.mark.parametrize("recipe, base, beta, arch", [
    ("trades+anc-cifar10-resnet18", "trades", 6.0, "resnet18"),
    ("trades+anc-cifar10-wrn-34-10", "trades", 6.0, "wrn-34-10"),
    ("pgd-at+anc-cifar10-resnet18", "pgd-at", None, "resnet18"),
    ("mart+anc-cifar10-resnet18", "mart", 5.0, "resnet18"),
    ("trades+anc-tiny-imagenet-preact-resnet18", "trades", 6.0, "preact-resnet18"),
    ("trades+anc-mnist-small-cnn", "trades", 1.0, "small-cnn"),
])
def test_recipes(recipe, base, beta, arch):
    path = ROOT / "configs" / f"{recipe}.yaml"
    assert path.read_text().startswith("# ANCRA (Zhou et al.")
    cfg = config.load(path)
    assert cfg.method["name"] == f"{base}+anc" and cfg.method.get("beta") == beta
    assert cfg.terms["anc"]["weight"] == 3.0 and cfg.terms["anc"]["strategy"] == "random"
    assert cfg.model.ra is True and cfg.model.ra_weight == 2.0 and cfg.model.arch == arch
