"""AALP: contributions, guided dropout, adaptive pairing weights, the loss on hand-checkable
tensors, and the concentration read-out."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import config, methods, models, readouts
from advrep.cli import main
from advrep.contributions import concentration, contributions, head_weight
from advrep.errors import ConfigError
from advrep.methods.aalp import guided_dropout, keep_mask
from advrep.methods.base import Passes
from advrep.threat import Threat


def small_model():
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28)
    nn.init.normal_(model.head.weight, std=0.1)  # the reference zero-init makes every contribution 0
    nn.init.normal_(model.head.bias, std=0.1)
    return model


# ------------------------------------------------------------------------ contributions


def test_contributions_equal_gradient_times_activation():
    model = small_model().eval()
    x, y = torch.rand(5, 1, 28, 28), torch.tensor([0, 3, 3, 7, 9])
    h, logits = model.forward_features(x)
    grad, = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), h)
    r = contributions(h, head_weight(model), y)
    assert r.shape == (5, 200)
    assert torch.allclose(r, grad * h, atol=1e-6)
    # and they add up to the true-class logit, less its bias
    assert torch.allclose(r.sum(1) + model.head.bias[y], logits.gather(1, y[:, None]).squeeze(1), atol=1e-5)


def test_contributions_need_a_linear_head():
    model = models.create("small-cnn", in_channels=1, image_size=28, head="cosine")
    with pytest.raises(ConfigError, match="need a linear head"):
        head_weight(model)
    with pytest.raises(ConfigError, match="method 'aalp' needs model.head=linear, got 'cosine'"):
        config.load(None, ["--method=aalp", "--model.head=cosine"])


# ------------------------------------------------------------------------ guided dropout


def test_top_fraction_keeps_the_largest_contributions_with_ties_to_the_lower_index():
    r = torch.tensor([[3.0, -1.0, 2.0, 0.5],
                      [0.0, 0.0, 0.0, 0.0],   # all tied: the first two
                      [1.0, 5.0, 5.0, -2.0],
                      [1.0, 2.0, 2.0, 2.0]])  # a tie across the cut: the lower indices win
    expected = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(keep_mask(r, "top-fraction", 0.5, 0.0), expected)
    # round(ρ·d) with halves up: 0.5·5 → 3 features; ρ = 0.2 of 4 → still at least 1
    r5 = torch.tensor([[0.1, 0.4, 0.3, 0.2, 0.5]])
    assert keep_mask(r5, "top-fraction", 0.5, 0.0).tolist() == [[False, True, True, False, True]]
    assert keep_mask(r[:1], "top-fraction", 0.2, 0.0).tolist() == [[True, False, False, False]]
    h = torch.arange(1.0, 17.0).view(4, 4)
    dropped, _ = guided_dropout(h, r, "top-fraction", 0.5, 0.0)
    assert torch.equal(dropped, h * expected / 0.5)


def test_threshold_keeps_contributions_at_or_above_it_rescaled_per_sample():
    r = torch.tensor([[0.3, -0.1, 0.0, 2.0],
                      [-1.0, -2.0, -0.5, -3.0],  # nothing kept: zeros, not NaN
                      [1.0, 1.0, 1.0, 1.0]])
    expected = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(keep_mask(r, "threshold", 0.5, 0.0), expected)
    assert keep_mask(r, "threshold", 0.5, 0.5).tolist() == [[False, False, False, True], [False] * 4, [True] * 4]
    h = torch.ones(3, 4)
    dropped, _ = guided_dropout(h, r, "threshold", 0.5, 0.0)
    assert torch.allclose(dropped, torch.tensor([[4 / 3, 0, 4 / 3, 4 / 3], [0.0] * 4, [1.0] * 4]))


class TableModel(nn.Module):
    """Penultimate features from a table (input 0: clean, 1: adversarial) and a linear head
    in which class 0 reads features 0 and 2, class 1 reads features 1 and 3."""

    def __init__(self, h_clean, h_adv):
        super().__init__()
        self.table = {0: h_clean, 1: h_adv}
        self.head = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))

    def forward_features(self, x):
        h = self.table[int(x.flatten()[0])]
        return h, self.head(h)


def table_passes(train: bool):
    h = torch.tensor([[2.0, 1.0, 1.0, 3.0], [1.0, 1.0, 0.0, 2.0]], requires_grad=True)
    h_adv = torch.tensor([[1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 1.0, 3.0]], requires_grad=True)
    model = TableModel(h, h_adv).train(train)
    return Passes(model, torch.zeros(2, 1), torch.ones(2, 1)), h, h_adv


# The logits by hand, y = (0, 1). Each pass is masked by the contributions to the class its own
# undropped logits predict: eval-mode logits f = ((3,4), (1,3)), f' = ((1,3), (2,3)), so class 1
# everywhere. Train mode, ρ = 0.5 (keep 2 of 4, ×2). Clean 0: r = (0,1,0,3) keeps {1,3} → f0 = (0,8);
# clean 1: r = (0,1,0,2) keeps {1,3} → f1 = (0,6). Adversarial 0: r = (0,2,0,1) keeps {1,3} →
# f0' = (0,6); adversarial 1: r = (0,0,0,3) keeps 3 and, of the tied zeros, 0 → f1' = (2,6).
TRAIN_LOGITS = ([[0, 8], [0, 6]], [[0, 6], [2, 6]])
EVAL_LOGITS = ([[3, 4], [1, 3]], [[1, 3], [2, 3]])
KEPT = [[1, 3], [1, 3]]
KEPT_ADV = [[1, 3], [0, 3]]


def expected_loss(logits, weighting, lam, gamma):
    """The AALP loss in plain Python, written from METHODS.md's formula."""
    (f0, f1), (a0, a1) = logits
    y = (0, 1)

    def ce(f, t):
        return math.log(sum(math.exp(v) for v in f)) - f[t]

    ce_nat = [ce(f0, y[0]), ce(f1, y[1])]
    ce_adv = [ce(a0, y[0]), ce(a1, y[1])]
    pair = [sum((u - v) ** 2 for u, v in zip(f, a)) / 2 for f, a in ((f0, a0), (f1, a1))]
    if weighting == "prob":
        w = [math.exp(-c) ** gamma for c in ce_adv]  # p'_y = exp(−CE')
    elif weighting == "binary":
        w = [float(a.index(max(a)) == t) for a, t in ((a0, y[0]), (a1, y[1]))]
    else:
        w = [min(1.0, (0.5 * cn + 0.5 * ca) / (lam * d)) for cn, ca, d in zip(ce_nat, ce_adv, pair)]
    return (0.5 * sum(ce_nat) / 2 + 0.5 * sum(ce_adv) / 2 + lam * sum(wi * d for wi, d in zip(w, pair)) / 2), w


@pytest.mark.parametrize("weighting,lam,gamma", [("prob", 0.5, 1.0), ("prob", 0.5, 2.0), ("binary", 0.5, 1.0),
                                                 ("ratio", 0.5, 1.0), ("ratio", 0.01, 1.0)])
@pytest.mark.parametrize("train", [True, False])
def test_total_loss_on_hand_checkable_tensors(weighting, lam, gamma, train):
    p, _, _ = table_passes(train)
    method = methods.create("aalp", weighting=weighting, lam=lam, gamma=gamma)
    loss, metrics = method.loss(p, torch.tensor([0, 1]))
    expected, w = expected_loss(TRAIN_LOGITS if train else EVAL_LOGITS, weighting, lam, gamma)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["weight"].item() == pytest.approx(sum(w) / 2, rel=1e-6)
    assert metrics["kept_adv"].item() == (0.5 if train else 1.0)


def test_the_mask_does_not_read_the_label():
    """Swapping the labels only swaps the CE targets: the masks, hence the dropped logits, stay."""
    (f0, f1), (a0, a1) = TRAIN_LOGITS
    loss, _ = methods.create("aalp").loss(table_passes(train=True)[0], torch.tensor([1, 0]))
    # sample 0 with label 1 and sample 1 with label 0 is the table's rows swapped with y = (0, 1)
    assert loss.item() == pytest.approx(expected_loss(((f1, f0), (a1, a0)), "prob", 0.5, 1.0)[0], rel=1e-6)


def test_an_untrained_network_does_not_classify_through_the_mask():
    """A mask chosen knowing y would let an untrained network score ~100% training accuracy
    through the mask alone (METHODS.md's literal reading); the prediction-guided one scores
    what the network scores without it."""
    model = small_model().train()
    torch.manual_seed(1)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    _, metrics = methods.create("aalp").objective(model, x, x, y)
    assert metrics["kept"].item() == 0.5
    assert metrics["acc"].item() < 0.3, metrics["acc"]


def test_guide_is_not_an_option():
    with pytest.raises(ConfigError, match="guide"):
        methods.create("aalp", guide="label")


def test_guided_dropout_passes_gradient_to_the_kept_features_only():
    p, h, h_adv = table_passes(train=True)
    loss, _ = methods.create("aalp").loss(p, torch.tensor([0, 1]))
    g, g_adv = torch.autograd.grad(loss, [h, h_adv])
    for grad, kept_rows in ((g, KEPT), (g_adv, KEPT_ADV)):
        for i, kept in enumerate(kept_rows):
            dropped = [k for k in range(4) if k not in kept]
            assert grad[i, dropped].eq(0).all() and grad[i, kept].ne(0).all()


def test_eval_mode_uses_the_models_own_logits():
    model = small_model().eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    x_adv = (x + 0.2).clamp(0, 1)
    _, m_aalp = methods.create("aalp", weighting="binary").objective(model, x, x_adv, y)
    _, m_alp = methods.create("alp").objective(model, x, x_adv, y)
    assert torch.equal(m_aalp["loss_ce"], m_alp["loss_ce"]) and torch.equal(m_aalp["loss_ce_adv"], m_alp["loss_ce_adv"])
    assert m_aalp["kept"].item() == 1.0


@pytest.mark.parametrize("weighting", ["prob", "binary", "ratio"])
def test_the_weights_carry_no_gradient(weighting):
    torch.manual_seed(4)
    f = torch.randn(5, 3, requires_grad=True)
    f_adv = torch.randn(5, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1])
    method = methods.create("aalp", weighting=weighting, lam=0.5)
    eval_model = nn.Module().eval()  # eval mode: the loss reads these logits as they are
    p = Passes(eval_model, None, None)
    p.__dict__.update(clean=(None, f), adv=(None, f_adv))
    loss, metrics = method.loss(p, y)
    g, g_adv = torch.autograd.grad(loss, [f, f_adv])
    # the gradient with w held constant, by hand: d/df' of ½·CE' and of λ/B·w_i·mean_k(f − f')²
    with torch.no_grad():
        cls = 0.5 * F.cross_entropy(f, y, reduction="none") + 0.5 * F.cross_entropy(f_adv, y, reduction="none")
        pair = (f - f_adv).pow(2).mean(1)
        w = method.weights(f_adv, y, cls, pair)
        onehot = F.one_hot(y, 3).float()
        pair_grad = 0.5 * w[:, None] * (2 / 3) * (f_adv - f) / 5
        expected_adv = 0.5 * (F.softmax(f_adv, 1) - onehot) / 5 + pair_grad
        expected = 0.5 * (F.softmax(f, 1) - onehot) / 5 - pair_grad
    assert not w.requires_grad and not metrics["weight"].requires_grad
    assert torch.allclose(g_adv, expected_adv, atol=1e-6) and torch.allclose(g, expected, atol=1e-6)


# ------------------------------------------------------------------------ the method


def test_attack_is_alps(monkeypatch):
    seen = {}
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: seen.update(k) or x)
    methods.create("aalp").perturb(small_model(), torch.rand(2, 1, 28, 28), torch.tensor([0, 1]),
                                   Threat(eps=0.3, step_size=0.1, steps=4))
    assert seen["loss"] == "ce" and seen["random_start"] == "uniform" and seen["steps"] == 4


def test_options_are_checked():
    with pytest.raises(ConfigError, match="method.rho is the fraction"):
        methods.create("aalp", rho=0.0)
    with pytest.raises(ConfigError, match="method.gamma must be non-negative"):
        methods.create("aalp", gamma=-1.0)
    with pytest.raises(ConfigError, match="valid values: top-fraction, threshold"):
        methods.create("aalp", keep="random")
    with pytest.raises(ConfigError, match="takes no add-on terms"):
        methods.create("aalp+lp")
    assert methods.head_of("aalp") == "linear"
    assert methods.readouts_of("aalp") == ("contribution_concentration",)


# ------------------------------------------------------------------------ concentration


def test_concentration_on_known_contributions():
    r = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -5.0],   # of 10: 4+3 ≥ 5 → 2; 4+3+2 = 9 exactly → 3
                      [1.0, 1.0, 1.0, 1.0, 0.0, 0.0],    # of 4: 2 exactly → 2; 3 < 3.6 → 4
                      [-1.0, -2.0, 0.0, 0.0, 0.0, 0.0],  # no positive contribution: not counted
                      [0.1, 10.0, 0.0, 0.0, 0.0, 0.0]])  # of 10.1: 10 ≥ 9.09 → 1 and 1
    out = concentration(r)
    assert out == {"n50": pytest.approx((2 + 2 + 1) / 3), "n90": pytest.approx((3 + 4 + 1) / 3), "samples": 3}


def test_concentration_readout_on_a_probe(monkeypatch):
    model = small_model().eval()
    torch.manual_seed(5)
    x, y = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (12,))
    x_adv = (x.float() / 255 + 0.2).clamp(0, 1)
    monkeypatch.setattr(readouts.attacks, "pgd", lambda *a, **k: pytest.fail("must reuse the given examples"))
    probe = readouts.Probe(model, x, y, norm="Linf", eps=0.3, step_size=0.1, steps=3, device="cpu", x_adv=x_adv)
    out = readouts.run(["contribution_concentration"], probe)["contribution_concentration"]

    def counts(images, q):  # per sample, by a plain loop over the sorted positive contributions
        with torch.no_grad():
            h = model.forward_features(images)[0]
        result = []
        for hi, yi in zip(h.tolist(), y.tolist()):
            pos = sorted((max(v * w, 0.0) for v, w in zip(hi, model.head.weight[yi].tolist())), reverse=True)
            if sum(pos) > 0:
                total, n = 0.0, 0
                while total < q * sum(pos) * (1 - 1e-6):
                    total, n = total + pos[n], n + 1
                result.append(n)
        return sum(result) / len(result)

    assert out["feature_dim"] == 200 and out["clean_samples"] > 0
    for side, images in (("clean", x.float() / 255), ("adv", x_adv)):
        assert out[f"{side}_n50"] == pytest.approx(counts(images, 0.5))
        assert out[f"{side}_n90"] == pytest.approx(counts(images, 0.9))


@pytest.mark.slow
def test_aalp_trains_on_real_mnist_and_reports_the_concentration(tmp_path, shared):
    run = tmp_path / "run"
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart-mnist.yaml"
    assert main(["train", "--quiet", "--config", str(quickstart), "--data-dir", str(shared("mnist")), "--out",
                 str(run), "--method=aalp", "--data.train_subset=256", "--data.val_size=64", "--train.epochs=1",
                 "--threat.steps=2", "--train.val_steps=2", "--eval.n=50", "--eval.attacks=[pgd]",
                 "--eval.pgd_steps=2", "--eval.checks=false",
                 "--eval.corruptions=none"]) == 0
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["kept"] == pytest.approx(0.5) and 0 <= row["weight"] <= 1
    report = json.loads((run / "report.json").read_text())
    for values in (row["readouts"]["contribution_concentration"], report["readouts"]["contribution_concentration"]):
        assert 1 <= values["clean_n50"] <= values["clean_n90"] <= 200
