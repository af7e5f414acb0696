"""The compiled and CUDA code paths, forced on the CPU: static-shape graphs that hold up in a
real run, read-outs that survive compilation, outputs kept as copies, the attack's parameter
freezing only where it pays, and KL attacks' first step in fp32 under autocast."""

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from advrep import attacks, compiling, models
from advrep.cli import main
from advrep.data.loader import DeviceLoader
from advrep.readouts import Probe
from conftest import tiny_command


@pytest.fixture
def graphs(monkeypatch):
    """Compile with a backend that records each graph's tensor input shapes and runs it as captured."""
    import torch._dynamo

    seen = []

    def backend(gm, example_inputs):
        seen.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return gm.forward

    monkeypatch.setattr(compiling, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    yield seen
    torch._dynamo.reset()


def small_cnn(**kw):
    torch.manual_seed(0)
    return models.create("small-cnn", num_classes=10, in_channels=1, image_size=28, **kw)


@pytest.mark.slow  # about 45 s on 2 busy cores: dynamo traces five graphs
def test_compiled_trainer_runs_without_eager_fallback_and_complete_readouts(tmp_path, tiny_mnist, graphs,
                                                                             monkeypatch):
    """trades+adr as users run it: bf16 autocast, channels_last, a partial last batch (80 training
    images, batch 32), a 2-step attack, validation and its read-outs, two epochs. Dynamo must never hit its
    recompile limit (which would run the rest eagerly, silently), no graph may have dynamic
    shapes, and stage_divergence keeps every stage."""
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    run = tmp_path / "run"
    assert main(tiny_command(tiny_mnist, run, "--method=trades+adr", "--train.epochs=2", "--train.amp=bf16",
                             "--train.channels_last=on", "--train.compile=default",
                             "--threat.steps=2", "--eval.after_train=false")) == 0
    # training, the attack's fp32 first step and its bf16 steps, the fp32 clean KL targets, the
    # validation's attack and passes: one graph each
    assert 0 < len(graphs) <= 6, graphs
    batch_sizes = {shape[0] for g in graphs for shape in g if shape[1:] == (1, 28, 28)}
    assert batch_sizes <= {32, 16}, batch_sizes  # the training batch and the 16 validation images
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    stages = [*models.create("small-cnn").stage_paths, "features", "logits"]
    for row in rows:
        assert [k for k in row["readouts"]["stage_divergence"] if k.startswith("relative:")] == \
            [f"relative:{s}" for s in stages]


def test_full_batches_complete_the_last_batch_from_the_epochs_order():
    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    y = torch.arange(10)
    loader = DeviceLoader(x, y, 4, shuffle=True, seed=3, full_batches=True)
    batches = [yb for _, yb in loader]
    assert [len(b) for b in batches] == [4, 4, 4] and len(loader) == 3
    order = torch.cat(batches)
    assert sorted(order[:10].tolist()) == list(range(10))  # each image once ...
    assert order[10:].tolist() == order[:2].tolist()  # ... and the first two again
    assert [len(yb) for _, yb in DeviceLoader(x, y, 4)] == [4, 4, 2]  # the default keeps the partial batch


def test_stage_readout_of_a_compiled_model_has_every_stage(graphs):
    model = small_cnn().eval()
    x = torch.rand(3, 1, 28, 28)
    eager = model.forward_stages(x)
    compiling.compile_model(model, "default")
    model.forward_features(x)  # the compiled graph exists before the read-out's hooks are added
    compiled = model.forward_stages(x)
    assert list(compiled) == list(eager) and len(eager) == 5
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k])


class Replaying(torch.nn.Module):
    """A model whose outputs live in one buffer that every call overwrites, as a CUDA-graph
    replay's do."""

    def __init__(self):
        super().__init__()
        self.net = small_cnn().eval()
        self.out_h, self.out_f = torch.zeros(0), torch.zeros(0)

    def forward_features(self, x):
        h, f = self.net.forward_features(x)
        if self.out_h.shape != h.shape:
            self.out_h, self.out_f = torch.empty_like(h), torch.empty_like(f)
        return self.out_h.copy_(h), self.out_f.copy_(f)

    def forward(self, x):
        return self.forward_features(x)[1]


def test_probe_keeps_copies_of_outputs_a_replay_overwrites():
    model = Replaying().eval()
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    probe = Probe(model, x, y, norm="Linf", eps=0.1, step_size=0.05, steps=1, device="cpu", batch_size=4)
    h, logits = probe.clean
    h_adv, _ = probe.adv  # more replays
    with torch.no_grad():
        want_h, want = model.net.forward_features(x)
    torch.testing.assert_close(logits, want)
    torch.testing.assert_close(h, want_h)
    assert not torch.equal(h, h_adv)


def test_probe_of_a_compiled_model_pads_its_last_batch_and_gives_the_eager_results(graphs):
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))
    attack = dict(norm="Linf", eps=0.1, step_size=0.05, steps=2)
    eager = Probe(small_cnn().eval(), x, y, device="cpu", batch_size=4, **attack)
    model = compiling.compile_model(small_cnn().eval(), "default")
    compiled = Probe(model, x, y, device="cpu", batch_size=4, **attack)
    torch.manual_seed(1)
    want_adv = eager.x_adv
    torch.manual_seed(1)
    got_adv = compiled.x_adv
    assert got_adv.shape == want_adv.shape
    torch.testing.assert_close(compiled.clean[1], eager.clean[1])
    torch.testing.assert_close(compiled.adv[1], eager.adv[1])  # same attack, same random start
    assert {shape[0] for g in graphs for shape in g if shape[1:] == (1, 28, 28)} == {4}


class Casts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func is torch.ops.aten._to_copy.default
        return func(*args, **(kwargs or {}))


def test_the_attack_freezes_parameters_only_on_a_compiled_model(graphs):
    """Eager: the parameters keep requires_grad (autocast then casts each weight once, not per
    step) and no .grad is filled; compiled: frozen during the attack, restored after."""
    model = small_cnn().eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    flags = []
    model.classifier.fc1.register_forward_hook(lambda m, i, o: flags.append(m.weight.requires_grad))
    casts = []
    for steps in (1, 3):
        with torch.autocast("cpu", dtype=torch.bfloat16), Casts() as c:
            attacks.pgd(model, x, y, eps=0.3, step_size=0.1, steps=steps)
        casts.append(c.n)
    assert all(flags) and all(p.grad is None for p in model.parameters())
    per_step = (casts[1] - casts[0]) / 2
    tensors = len(list(model.parameters()))  # 14; re-casting every weight and bias cost 18 per step
    assert per_step < tensors, f"{per_step} casts per PGD step: the weights are cast again at each step"

    compiled = compiling.compile_model(small_cnn().eval(), "default")
    seen = []
    real = compiled.forward_features
    compiled.forward_features = lambda t: (seen.append(compiled.classifier.fc1.weight.requires_grad), real(t))[1]
    compiling.compile_model(compiled, "default")  # marked already: not compiled twice
    attacks.pgd(compiled, x, y, eps=0.3, step_size=0.1, steps=2)
    assert seen == [False, False] and all(p.requires_grad for p in compiled.parameters())


@pytest.mark.parametrize("name", ["trades", "spat", "adv-dpnp"])
def test_kl_attacks_first_step_under_bf16_is_fp32s(name):
    """TRADES' attack starts at x + 0.001·N(0, 1), where the KL to the clean prediction is below
    bf16's rounding: a bf16 first step followed rounding noise (its sign agreed with fp32's on
    about 60% of the pixels). The clean targets and the first step now run in fp32, so under
    autocast the first step is fp32's exactly, and the following bf16 steps keep its direction."""
    from advrep import methods
    from advrep.threat import Threat

    method = methods.create(name, **({"attack": "kl"} if name == "adv-dpnp" else {}))
    torch.manual_seed(0)
    model = models.create("small-cnn", num_classes=10, in_channels=1, image_size=28,
                          head=methods.head_of(name) or "linear", **method.head_args()).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def attack(steps, amp):
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return method.perturb(model, x, y, Threat(eps=0.3, step_size=0.01, steps=steps))

    assert torch.equal(attack(1, True), attack(1, False))
    delta_bf16, delta_fp32 = attack(3, True) - x, attack(3, False) - x
    assert (delta_bf16.sign() == delta_fp32.sign()).float().mean() > 0.9


def test_checkpoint_copies_the_state_to_the_host_in_one_go_per_dtype():
    from torch.overrides import TorchFunctionMode

    from advrep import checkpoint

    class Copies(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.n += func in (torch.Tensor.to, torch.Tensor.cpu)
            return func(*args, **(kwargs or {}))

    model = small_cnn()
    state = {**model.state_dict(), "step": torch.tensor(3, dtype=torch.int64)}
    with Copies() as copies:
        host = checkpoint._tensors(state)
    assert copies.n == 2  # one per dtype (float32, int64), not one per tensor (15)
    assert list(host) == list(state)
    for k, v in state.items():
        assert torch.equal(host[k], v) and host[k].data_ptr() != v.data_ptr()
    assert len({t.untyped_storage().data_ptr() for t in host.values()}) == len(host)


def test_a_training_step_makes_no_tensor_from_host_data(tmp_path, tiny_mnist, monkeypatch):
    """No `torch.tensor(python value, device=...)` per step (on CUDA a blocking host-to-device copy):
    counted as aten.lift_fresh (a tensor made from host data) while train_epoch runs."""
    from advrep import config, trainer

    counts = []

    class Fresh(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.lift_fresh.default:
                counts.append(1)
            return func(*args, **(kwargs or {}))

    cfg = config.load(None, ["--data.dataset=mnist", f"--data.data_dir={tiny_mnist}", "--data.val_size=16",
                             "--train.batch_size=16", "--threat.steps=1", "--train.epochs=1"])
    t = trainer.Trainer(cfg, tmp_path / "run", progress=False, log=lambda *_: None)
    with Fresh():
        t.train_epoch(0)
    assert len(t.loader) == 5 and len(counts) < 5, len(counts)


def test_a_cuda_device_turns_cudnn_benchmark_on(monkeypatch):
    from advrep import factory

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    factory.resolve_device("cpu")
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert factory.resolve_device("auto").type == "cuda"
    assert torch.backends.cudnn.benchmark is True


def test_evaluation_pins_the_test_images_and_copies_batches_without_blocking(monkeypatch):
    """On CUDA the test set is pinned once and each batch copied with non_blocking (faked here on
    the CPU: the calls are recorded and the tensors stay where they are)."""
    from advrep import evaluation, tensors

    calls = []

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: False)
    cuda = torch.device("cuda")
    x = torch.zeros(2, 3)
    assert tensors.pinned(x, cuda) is x and calls == ["pin"]
    assert tensors.pinned(x, "cpu") is x and calls == ["pin"]
    moved = []
    real_to = torch.Tensor.to
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: moved.append((a, k)) or real_to(self, "cpu"))
    tensors.to_device(x, cuda)
    assert moved == [((cuda,), {"non_blocking": True})]
    seen = []
    monkeypatch.setattr(evaluation, "pinned", lambda t, device: seen.append("pinned") or t)
    monkeypatch.setattr(evaluation, "to_device", lambda t, device: seen.append("to_device") or real_to(t, device))
    monkeypatch.setattr(torch.Tensor, "to", real_to)
    from advrep.config import EvalConfig, ThreatConfig

    model = small_cnn().eval()
    evaluation.correctness(model, torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8),
                           torch.randint(0, 10, (6,)), ThreatConfig(eps=0.3, step_size=0.1, steps=1),
                           EvalConfig(attacks=[], batch_size=4), "cpu", progress=False)
    assert seen[:2] == ["pinned", "pinned"] and seen.count("to_device") == 4  # x and y of 2 batches


def test_auto_precision_and_layout_follow_the_device(monkeypatch):
    from advrep import factory

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    assert factory.fast_path(cpu) == (False, True)  # AVX2 only: bf16 would be emulated; NHWC pays
    assert factory.fast_path(cpu, "bf16", "off") == (True, False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert factory.fast_path(cpu) == (True, True)
    assert factory.fast_path(cpu, "off", "off") == (False, False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert factory.fast_path(cpu) == (True, False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert factory.fast_path(cuda) == (True, True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert factory.fast_path(cuda) == (False, True)


def test_a_tapped_layer_of_a_compiled_model_is_recorded_as_in_eager(graphs):
    """ADR on the small CNN reads the convolutional features through a forward hook (a tap); the
    compiled graph does not run hooks added after it was made, so the passes read the eager one."""
    from advrep.methods.base import Passes

    model = small_cnn().eval()
    path = model.pre_dropout_path
    x = torch.rand(3, 1, 28, 28)
    eager = Passes(model, x, x, taps=(path,)).tap(path)
    compiling.compile_model(model, "default")
    model.forward_features(x)  # the compiled graph exists before the tap's hook is added
    torch.testing.assert_close(Passes(model, x, x, taps=(path,)).tap(path), eager)
