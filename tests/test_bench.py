"""`advrep bench` runs end to end and reports what it measured (its figures are timings, so the
test checks their form and consistency, never a speed)."""

import json

import pytest
import torch

from advrep import bench, methods, models
from advrep.cli import main
from advrep.factory import native_bf16
from advrep.threat import Threat


@pytest.mark.parametrize("method", ["pgd-at", "trades"])
@pytest.mark.slow
def test_bench_reports_both_ways_and_their_ratio(method):
    s = bench.Setup(method=method, arch="small-cnn", dataset="mnist", batch_size=8, device=torch.device("cpu"),
                    images=16, amp=False, channels_last=False)
    r = bench.run(s, warmup=1, calls=1)
    for part in ("attack", "train_step", "epoch"):
        x = r[part]
        assert x["advrep_img_s"] > 0 and x["plain_img_s"] > 0
        assert x["ratio"] == pytest.approx(x["advrep_img_s"] / x["plain_img_s"])
    assert "ratio" in bench.format_result(r)


def test_plain_pgd_is_the_same_attack_as_advreps():
    """The plain way does the same work: from the same start, plain_pgd and advrep's PGD give
    the same adversarial examples (fp32, CPU), so the bench's ratio compares only how."""
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28).eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    method = methods.create("pgd-at")
    torch.manual_seed(1)
    fast = method.perturb(model, x, y, Threat(eps=0.3, step_size=0.05, steps=5))
    torch.manual_seed(1)
    plain = bench.plain_pgd(model, x, y, eps=0.3, step_size=0.05, steps=5, kl=False)
    assert (fast - plain).abs().max() < 1e-5


@pytest.mark.slow
def test_bench_command_prints_json(capsys):
    assert main(["bench", "--method", "fgsm-rs", "--arch", "small-cnn", "--dataset", "mnist", "--batch-size", "8",
                 "--images", "16", "--calls", "1", "--device", "cpu", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    # --amp defaults to auto: bf16 where this CPU has it natively (AVX512-BF16 or AMX), else off
    assert r["device"] == "cpu" and r["amp_bf16"] is native_bf16(torch.device("cpu"))
    assert set(r["epoch"]) == {"advrep_img_s", "plain_img_s", "ratio"}


@pytest.mark.slow
def test_bench_compiles_advreps_side_only(monkeypatch):
    """--compile: advrep's copy of the model is compiled (graphs captured), the plain way's is not,
    and the report says which mode ran."""
    import torch._dynamo

    from advrep import compiling

    graphs = []
    monkeypatch.setattr(compiling, "COMPILE_BACKEND", lambda gm, inputs: graphs.append(1) or gm.forward)
    torch._dynamo.reset()
    s = bench.Setup(method="pgd-at", arch="small-cnn", dataset="mnist", batch_size=8, device=torch.device("cpu"),
                    images=16, amp=False, channels_last=False, compile="default")
    r = bench.run(s, warmup=1, calls=1)
    torch._dynamo.reset()
    assert graphs and r["compile"] == "default" and "compile default" in bench.format_result(r)
    assert r["train_step"]["advrep_img_s"] > 0


class Counting(torch.nn.Module):
    """The model with its forward passes counted: on the clean batch, and on anything else."""

    def __init__(self, model, x):
        super().__init__()
        self.model, self.x = model, x
        self.clean = self.other = 0

    def forward(self, t):
        if t.shape == self.x.shape and torch.equal(t, self.x):
            self.clean += 1
        else:
            self.other += 1
        return self.model(t)


@pytest.mark.parametrize("name", ["pgd-at", "trades", "mart", "fgsm-rs", "pgd-at+anc", "trades+anc", "standard"])
def test_the_plain_attack_does_the_methods_work(name):
    """Both sides run the method's own attack: as many passes on perturbed inputs (fgsm-rs one,
    +anc's CE attack its steps), from the same start; the plain TRADES attack adds the clean pass
    its reference code recomputes at each step, advrep's computes it once."""
    # trades+anc with base_attack=ce: the anc code's CE attack replaces TRADES' KL attack
    method = methods.create(name, terms={"anc": {"base_attack": "ce"}} if name == "trades+anc" else None)
    torch.manual_seed(0)
    net = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28).eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    threat = Threat(eps=0.3, step_size=0.05, steps=3)
    fast, plain = Counting(net, x), Counting(net, x)
    spec = bench.attack_spec(method, Counting(net, x), x, y, threat)
    torch.manual_seed(1)
    x_fast = method.perturb(fast, x, y, threat)
    torch.manual_seed(1)
    x_plain = x if spec is None else bench.plain_pgd(plain, x, y, **spec)
    steps = 0 if name == "standard" else 1 if name == "fgsm-rs" else 3
    assert fast.other == plain.other == steps
    kl = name == "trades"
    assert (fast.clean, plain.clean) == ((1, 3) if kl else (0, 0))
    if not kl:  # CE attacks from the same start: the same examples
        assert (x_fast - x_plain).abs().max() < 1e-5
