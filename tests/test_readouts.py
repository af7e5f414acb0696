"""Read-outs: the probe shares one attack among read-outs and agrees with the evaluation."""

import pytest
import torch

from advrep import config, readouts
from advrep.config import EvalConfig, ThreatConfig
from advrep.errors import ConfigError
from advrep.evaluation import correctness, evaluate
from advrep.models import create


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = create("small-cnn", in_channels=1, image_size=28).eval()
    torch.nn.init.normal_(model.head.weight, std=0.3)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(0, 10, (12,))
    return model, x, y


def test_probe_accuracies_match_the_evaluation_masks(setup):
    model, x, y = setup
    threat = ThreatConfig(eps=0.3, step_size=0.1, steps=3)
    ev = EvalConfig(attacks=["pgd"], pgd_steps=3, pgd_step_size=0.1, batch_size=5)
    torch.manual_seed(1)
    masks, kept = correctness(model, x, y, threat, ev, "cpu", progress=False, keep="pgd")
    torch.manual_seed(1)
    probe = readouts.Probe(model, x, y, norm="Linf", eps=0.3, step_size=0.1, steps=3, device="cpu", batch_size=5)
    assert torch.equal(probe.x_adv, kept), "same attack, same random start, same examples"
    acc = probe.accuracies()
    assert acc["clean"] == pytest.approx(masks["clean"].float().mean().item())
    assert acc["robust"] == pytest.approx(masks["pgd"].float().mean().item())


def test_probe_reuses_given_adversarial_examples_and_feature_shift(setup, monkeypatch):
    model, x, y = setup
    x_adv = (x.float() / 255 + 0.1).clamp(0, 1)
    monkeypatch.setattr(readouts.attacks, "pgd", lambda *a, **k: pytest.fail("must not attack again"))
    probe = readouts.Probe(model, x, y, norm="Linf", eps=0.3, step_size=0.1, steps=3, device="cpu", x_adv=x_adv)
    out = readouts.run(["feature_shift"], probe)["feature_shift"]
    with torch.no_grad():
        h, h_adv = model.forward_features(x.float() / 255)[0], model.forward_features(x_adv)[0]
    assert out["mean_shift"] == pytest.approx((h - h_adv).norm(dim=1).mean().item(), rel=1e-5)
    assert out["relative_shift"] == pytest.approx(out["mean_shift"] / h.norm(dim=1).mean().item(), rel=1e-5)


def test_report_carries_readouts_and_unknown_names_fail_at_config_load(setup):
    model, x, y = setup
    ev = EvalConfig(attacks=["pgd"], pgd_steps=2, pgd_step_size=0.1)
    report = evaluate(model, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=2), ev=ev, device="cpu",
                      progress=False, readout_names=["feature_shift"])
    assert set(report["readouts"]["feature_shift"]) == {"mean_shift", "relative_shift"}
    with pytest.raises(ConfigError, match="unknown read-out 'feature_shfit'"):
        config.load(None, ["--train.readouts=[feature_shfit]"])


def test_a_readout_with_a_plot_puts_its_picture_in_the_report(setup, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advrep.report import write_report

    def plot(result):
        fig, ax = plt.subplots()
        ax.bar(["shift"], [result["mean_shift"]])
        ax.set_title("feature shift")
        return fig

    monkeypatch.setitem(readouts.PLOTS, "feature_shift", plot)
    model, x, y = setup
    ev = EvalConfig(attacks=["pgd"], pgd_steps=1, pgd_step_size=0.1)
    report = evaluate(model, x, y, threat=ThreatConfig(eps=0.3, step_size=0.1, steps=1), ev=ev, device="cpu",
                      progress=False, readout_names=["feature_shift"])
    write_report(tmp_path, report)
    png = tmp_path / "feature_shift.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![feature_shift](feature_shift.png)" in (tmp_path / "report.md").read_text()
