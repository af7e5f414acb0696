"""Methods: the registry contract for every method and composition, and each formula on
hand-checkable tensors."""

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advrep import config, data, factory, methods, models
from advrep.coercion import build
from advrep.errors import ConfigError
from advrep.threat import Threat

THREAT = Threat(eps=0.3, step_size=0.1, steps=3)


def small_model():
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28)
    nn.init.normal_(model.head.weight, std=0.1)  # the reference zero-init makes every logit equal
    return model


def model_for(name: str, ra_on: bool = False):
    """small-cnn for MNIST as ``advrep train --method=<name>`` builds it: with the head and head
    options the method asks for, and reverse attention if ``ra_on``."""
    info = data.info("mnist")
    cfg = config.resolve(config.load(None, [f"--method={name}", "--data.dataset=mnist", "--model.arch=small-cnn",
                                            f"--model.ra={str(ra_on).lower()}"]), info)
    torch.manual_seed(0)
    model = factory.build_model(cfg.model, info)
    nn.init.normal_(model.head.weight, std=0.1)  # the reference zero-init makes every logit equal
    return model


def compositions() -> list[str]:
    """Every base with every non-empty set of add-on terms, in registry order (``trades+adr``,
    ``trades+adr+anc``, ...)."""
    terms = methods.TERMS.names()
    sets = [c for k in range(1, len(terms) + 1) for c in itertools.combinations(terms, k)]
    return [f"{base}+{'+'.join(s)}" for base in methods.bases() for s in sets]


# Every method and composition, each on the model it trains with (the head it asks for); those
# with `anc` also with reverse attention (--model.ra=true), the full ANCRA.
CONTRACT = [*(pytest.param(name, False, id=name) for name in [*methods.METHODS.names(), *compositions()]),
            *(pytest.param(name, True, id=f"{name}/ra") for name in compositions() if "anc" in name.split("+"))]


@pytest.fixture
def batch():
    torch.manual_seed(2)
    return torch.rand(6, 1, 28, 28), torch.randint(0, 10, (6,))


@pytest.mark.parametrize("name, ra_on", CONTRACT)
def test_every_method_honours_the_contract(name, ra_on, batch):
    x, y = batch
    model = model_for(name, ra_on).train()
    method = methods.create(name)
    x_adv = method.perturb(model, x, y, THREAT)
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters()), "perturb must not touch parameter gradients"
    assert model.training, "perturb must leave the model's mode as it found it"
    loss, metrics = method.objective(model, x, x_adv, y, THREAT)
    assert loss.dim() == 0 and torch.isfinite(loss)
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_every_method_trains_against_the_l1_threat_model(name, batch):
    """The sparse L1 PGD as every method's inner maximization: inside the L1 ball and the box,
    and the objective trains."""
    x, y = batch
    model = model_for(name).train()
    threat = Threat("L1", eps=5.0, step_size=1.25, steps=3)
    method = methods.create(name)
    x_adv = method.perturb(model, x, y, threat)
    assert ((x_adv - x).abs().flatten(1).sum(1) <= 5.0 * (1 + 1e-5)).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    loss, _ = method.objective(model, x, x_adv, y, threat)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", [*methods.METHODS.names(), *compositions()])
def test_every_method_rejects_unknown_hyperparameters(name):
    with pytest.raises(ConfigError, match="unknown config key 'method.nonsense'"):
        methods.create(name, nonsense=1)


def test_standard_is_clean_cross_entropy(batch):
    x, y = batch
    model = small_model().eval()  # no dropout: two passes must agree
    method = methods.create("standard")
    assert method.perturb(model, x, y, THREAT) is x
    loss, _ = method.objective(model, x, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))


def test_pgd_at_loss_is_adversarial_cross_entropy(batch):
    x, y = batch
    model = small_model().eval()  # no dropout: two passes must agree
    method = methods.create("pgd-at")
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
    methods.create("trades").perturb(model, x, y, THREAT)
    assert seen["loss"] == "kl" and seen["random_start"] == "normal"
    assert seen["clean_logits"].shape == (6, 10) and not seen["clean_logits"].requires_grad


def trades_loss_passes(model, x, x_adv, y, beta=6.0):
    """The forward passes of the authors' trades_loss after its attack, in their order: the
    clean batch for the CE, then model(x_adv) and model(x_natural) again inside the KL."""
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
    return loss_natural + beta * loss_robust / len(x)


def bn_network():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.3), nn.ReLU(), nn.Linear(3, 2))


def test_trades_updates_batchnorm_three_times_per_step_as_trades_loss():
    torch.manual_seed(1)
    x, x_adv, y = torch.randn(6, 4), torch.randn(6, 4) + 1.0, torch.tensor([0, 1, 0, 1, 0, 1])
    ours, code = bn_network().train(), bn_network().train()
    loss, _ = methods.create("trades").objective(ours, x, x_adv, y)
    expected = trades_loss_passes(code, x, x_adv, y)
    bn, bn_code = ours[2], code[2]
    assert bn.num_batches_tracked.item() == 3 == bn_code.num_batches_tracked.item()
    torch.testing.assert_close(bn.running_mean, bn_code.running_mean)
    torch.testing.assert_close(bn.running_var, bn_code.running_var)
    torch.testing.assert_close(loss, expected)  # no dropout: the second clean pass has the same values
    grads = torch.autograd.grad(loss, list(ours.parameters()))
    for g, g_code in zip(grads, torch.autograd.grad(expected, list(code.parameters()))):
        torch.testing.assert_close(g, g_code)
    # by hand: momentum 0.3 from mean 0, the batch means of clean, adversarial, clean
    mean = lambda v: ours[1](v).mean(0).detach()  # noqa: E731
    by_hand = torch.zeros(3)
    for batch in (x, x_adv, x):
        by_hand = 0.7 * by_hand + 0.3 * mean(batch)
    torch.testing.assert_close(bn.running_mean, by_hand)


def test_the_statistics_only_pass_skips_eval_mode_auxiliary_views_and_models_without_batchnorm():
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    model = bn_network().eval()
    methods.create("trades").objective(model, x, x + 1, y)
    assert model[2].num_batches_tracked.item() == 0
    from advrep.models import ra

    ra_model = ra.enable(models.create("resnet18", num_classes=10)).train()
    methods.create("trades").objective(ra_model, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), y[:2])
    assert ra_model.bn1.num_batches_tracked.item() == 3, "once per step, not once per RA point"
    counting = CountingModel().train()
    methods.create("trades").objective(counting, x.new_zeros(2, 1, 28, 28), x.new_ones(2, 1, 28, 28), y[:2])
    assert counting.calls == 2, "no BatchNorm: nothing to update, no third pass"


def test_attack_bn_mode_is_used_during_the_attack_only(batch, monkeypatch):
    x, y = batch
    model = small_model().train()
    modes = []
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: modes.append(m.training) or x)
    methods.create("pgd-at", attack_bn="eval").perturb(model, x, y, THREAT)
    methods.create("pgd-at", attack_bn="train").perturb(model, x, y, THREAT)
    assert modes == [False, True] and model.training


def test_method_config_validation():
    with pytest.raises(ConfigError, match="valid values: eval, train"):
        methods.create("pgd-at", attack_bn="none")
    with pytest.raises(ConfigError, match="expected float"):
        methods.create("trades", beta="six")
    cfg = build(methods.create("trades").Config, {"beta": "3"}, "method")
    assert cfg.beta == 3.0


# --------------------------------------------------------------------------------------
# Each objective against its original implementation: the reference losses below are
# written from the authors' released code (TRADES, MART, fast_adversarial) or paper
# (ALP/CLP), independently of advrep's code, and compared in float64.


def reference_pgd_at(model, x, x_adv, y):
    # Madry et al.: CE(f(x'), y)
    return F.cross_entropy(model(x_adv), y)


def reference_trades(model, x, x_adv, y, beta=6.0):
    # TRADES trades.py: loss_natural + beta * (1/B) * KLDivLoss(size_average=False)(log_softmax(f'), softmax(f))
    logits = model(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = nn.KLDivLoss(reduction="sum")(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1))
    return loss_natural + beta * loss_robust / len(x)


def reference_mart(model, x, x_adv, y, beta=6.0):
    # MART mart.py, line by line
    kl = nn.KLDivLoss(reduction="none")
    logits = model(x)
    logits_adv = model(x_adv)
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), new_y)
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, (y.unsqueeze(1)).long()).squeeze()
    loss_robust = (1.0 / len(x)) * torch.sum(
        torch.sum(kl(torch.log(adv_probs + 1e-12), nat_probs), dim=1) * (1.0000001 - true_probs))
    return loss_adv + float(beta) * loss_robust


def reference_alp(model, x, x_adv, y, lam=0.5):
    # Kannan et al.: 0.5 CE(clean) + 0.5 CE(adv) + lambda * mean squared logit difference
    logits, logits_adv = model(x), model(x_adv)
    return (0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(logits_adv, y)
            + lam * ((logits - logits_adv) ** 2).mean())


def reference_clp(model, x, x_adv, y, lam=0.5):
    # Kannan et al.: CE(clean) + lambda * mean squared difference between the two batch halves
    logits = model(x)
    half = len(x) // 2
    return F.cross_entropy(logits, y) + lam * ((logits[:half] - logits[half:2 * half]) ** 2).mean()


def reference_fgsm_rs(model, x, x_adv, y):
    # Wong et al. train_fgsm.py: the loss on the FGSM-RS example is CE(f(x'), y)
    return F.cross_entropy(model(x_adv), y)


REFERENCES = {"pgd-at": reference_pgd_at, "trades": reference_trades, "mart": reference_mart,
              "alp": reference_alp, "clp": reference_clp, "fgsm-rs": reference_fgsm_rs,
              "standard": lambda model, x, x_adv, y: F.cross_entropy(model(x), y)}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_objective_equals_the_original_implementation(name):
    torch.manual_seed(3)
    model = small_model().double().eval()  # eval: no dropout, so both sides see the same network
    x = torch.rand(9, 1, 28, 28, dtype=torch.float64)  # odd batch: CLP's unpaired sample
    x_adv = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    y = torch.randint(0, 10, (9,))
    loss, _ = methods.create(name).objective(model, x, x_adv, y)
    expected = REFERENCES[name](model, x, x_adv, y)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - expected.item()) <= 1e-6 * abs(expected.item())


# Methods whose objective is checked against hand-computed values in their own test file.
OWN_FORMULA_TESTS = {"adv-dpnp": "test_adv_dpnp.py", "dpnp": "test_adv_dpnp.py", "spat": "test_spat.py",
                     "aalp": "test_aalp.py"}


def test_every_registered_method_has_a_reference_test():
    assert set(REFERENCES) | set(OWN_FORMULA_TESTS) == set(methods.METHODS.names())
    assert not set(REFERENCES) & set(OWN_FORMULA_TESTS)
    for name, file in OWN_FORMULA_TESTS.items():
        text = (Path(__file__).parent / file).read_text()
        assert f'"{name}"' in text and ".objective(" in text, f"{file} must check {name}'s objective"


def test_mart_and_alp_keep_gradients_on_both_sides():
    torch.manual_seed(0)
    for name in ("mart", "alp"):
        model = small_model().eval()
        x = torch.rand(4, 1, 28, 28, requires_grad=True)
        x_adv = torch.rand(4, 1, 28, 28, requires_grad=True)
        loss, _ = methods.create(name).objective(model, x, x_adv, torch.tensor([0, 1, 2, 3]))
        gx, gadv = torch.autograd.grad(loss, [x, x_adv])
        assert gx.abs().sum() > 0 and gadv.abs().sum() > 0, name


def test_fgsm_rs_attack_is_one_step_of_1_25_eps_from_a_uniform_start(batch, monkeypatch):
    x, y = batch
    seen = {}
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, y, **k: seen.update(k) or x)
    methods.create("fgsm-rs").perturb(small_model(), x, y, Threat(eps=0.3, step_size=0.01, steps=40))
    assert seen["steps"] == 1 and seen["step_size"] == pytest.approx(0.375)
    assert seen["random_start"] == "uniform" and seen["eps"] == 0.3


def test_alp_least_likely_attack_targets_the_least_likely_class(batch, monkeypatch):
    x, y = batch
    model = small_model().eval()
    seen = {}
    monkeypatch.setattr(methods.base.attacks, "pgd", lambda m, x, t, **k: seen.update(k, target=t) or x)
    methods.create("alp", attack_target="least-likely").perturb(model, x, y, THREAT)
    assert seen["targeted"] and torch.equal(seen["target"], model(x).argmin(1))


# -------------------------------------------------------------------------- composition


class CountingModel(nn.Module):
    """small-cnn that counts its forward passes."""

    def __init__(self):
        super().__init__()
        self.net = small_model().eval()
        self.calls = 0

    def forward_features(self, x):
        self.calls += 1
        return self.net.forward_features(x)

    def forward(self, x):
        return self.forward_features(x)[1]


@pytest.mark.parametrize("base,passes", [(base, 2) for base in methods.bases()])  # clean and adversarial
def test_lp_term_adds_weighted_pairing_without_repeating_passes(batch, base, passes):
    x, y = batch
    x_adv = (x + 0.1).clamp(0, 1)
    model = CountingModel()
    composite = methods.create(f"{base}+lp", terms={"lp": {"weight": 0.3}})
    loss, metrics = composite.objective(model, x, x_adv, y)
    assert model.calls == passes, "the base's passes are shared with the term"
    base_loss, _ = methods.create(base).objective(model, x, x_adv, y)
    with torch.no_grad():
        pair = ((model(x) - model(x_adv)) ** 2).mean()
    assert torch.allclose(loss, base_loss + 0.3 * pair)
    assert torch.allclose(metrics["lp_pair"], pair)


def test_composition_errors_are_clear():
    with pytest.raises(ConfigError, match="takes no add-on terms"):
        methods.create("standard+lp")
    with pytest.raises(ConfigError, match="unknown add-on term 'zzz'"):
        methods.create("trades+zzz")
    with pytest.raises(ConfigError, match="has no 'lp' term"):
        methods.create("trades", terms={"lp": {"weight": 1.0}})
    with pytest.raises(ConfigError, match="unknown config key 'terms.lp.wight'"):
        methods.create("trades+lp", terms={"lp": {"wight": 1.0}})
    composite = methods.create("trades+lp", beta=3.0)
    assert composite.name == "trades+lp" and composite.hparams()["beta"] == 3.0
    assert composite.hparams()["terms"] == {"lp": {"weight": 0.5}}


def test_a_term_needing_a_head_the_model_lacks_fails_at_config_load(monkeypatch):
    from advrep import config

    monkeypatch.setattr(methods.TERMS.get("lp"), "head", "prototype")
    with pytest.raises(ConfigError, match="term 'lp' needs model.head=prototype, got 'linear'"):
        config.load(None, ["--method=trades+lp", "--model.head=linear"])
    assert config.load(None, ["--method=trades+lp"]).model.head is None, "auto: filled by resolve"


def test_clp_noise_trains_on_noisy_inputs_only():
    """clp with ``noise`` > 0: the loss is CLP's formula on the noisy batch that perturb returns,
    and the clean batch is never run; noise 0 returns the batch itself."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = torch.rand(4, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    assert methods.create("clp").perturb(model, x, y, THREAT) is x
    noisy = methods.create("clp", noise=0.5)
    x_noisy = noisy.perturb(model, x, y, THREAT)
    assert x_noisy.shape == x.shape and not torch.equal(x_noisy, x) and 0 <= x_noisy.min() and x_noisy.max() <= 1
    loss, _ = noisy.objective(model, x + float("nan"), x_noisy, y)  # the clean batch must not be read
    f = model(x_noisy)
    expected = F.cross_entropy(f, y) + 0.5 * (f[:2] - f[2:]).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    with pytest.raises(ConfigError, match="noise"):
        methods.create("clp", noise=-0.1)
