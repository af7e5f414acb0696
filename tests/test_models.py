"""Models: shapes, the feature API, reference state-dict layouts, heads and normalization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advrep.errors import ConfigError
from advrep.models import HEADS, MODELS, create

ARCHS = ["resnet18", "preact-resnet18", "wrn-34-10", "wrn-28-10", "small-cnn"]
FEATURE_DIM = {"resnet18": 512, "preact-resnet18": 512, "wrn-34-10": 640, "wrn-28-10": 640, "small-cnn": 200}
HEAD_PATH = {"resnet18": "linear", "preact-resnet18": "linear", "wrn-34-10": "fc", "wrn-28-10": "fc",
             "small-cnn": "classifier.fc3"}


def images(n=2, channels=3, size=32, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def bn(prefix, channels):
    return {f"{prefix}.{k}": (channels,) for k in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def resnet18_layout(k=10, c=3):
    keys = {"conv1.weight": (64, c, 3, 3), **bn("bn1", 64)}
    in_planes = 64
    for layer, planes in enumerate([64, 128, 256, 512], 1):
        for block in range(2):
            p, cin = f"layer{layer}.{block}", in_planes if block == 0 else planes
            keys |= {f"{p}.conv1.weight": (planes, cin, 3, 3), **bn(f"{p}.bn1", planes),
                     f"{p}.conv2.weight": (planes, planes, 3, 3), **bn(f"{p}.bn2", planes)}
            if block == 0 and layer > 1:
                keys |= {f"{p}.shortcut.0.weight": (planes, cin, 1, 1), **bn(f"{p}.shortcut.1", planes)}
        in_planes = planes
    return keys | {"linear.weight": (k, 512), "linear.bias": (k,)}


def preact_layout(k=10, c=3):
    keys = {"conv1.weight": (64, c, 3, 3)}
    in_planes = 64
    for layer, planes in enumerate([64, 128, 256, 512], 1):
        for block in range(2):
            p, cin = f"layer{layer}.{block}", in_planes if block == 0 else planes
            keys |= {**bn(f"{p}.bn1", cin), f"{p}.conv1.weight": (planes, cin, 3, 3),
                     **bn(f"{p}.bn2", planes), f"{p}.conv2.weight": (planes, planes, 3, 3)}
            if block == 0 and layer > 1:
                keys[f"{p}.shortcut.0.weight"] = (planes, cin, 1, 1)
        in_planes = planes
    return keys | bn("bn", 512) | {"linear.weight": (k, 512), "linear.bias": (k,)}


def wrn_layout(depth=34, widen=10, k=10, c=3):
    widths = [16, 16 * widen, 32 * widen, 64 * widen]
    keys = {"conv1.weight": (16, c, 3, 3)}
    for group in range(1, 4):
        for block in range((depth - 4) // 6):
            p = f"block{group}.layer.{block}"
            cin, cout = (widths[group - 1] if block == 0 else widths[group]), widths[group]
            keys |= {**bn(f"{p}.bn1", cin), f"{p}.conv1.weight": (cout, cin, 3, 3),
                     **bn(f"{p}.bn2", cout), f"{p}.conv2.weight": (cout, cout, 3, 3)}
            if cin != cout:
                keys[f"{p}.convShortcut.weight"] = (cout, cin, 1, 1)
    return keys | bn("bn1", widths[3]) | {"fc.weight": (k, widths[3]), "fc.bias": (k,)}


def small_cnn_layout(k=10, c=1, side=4):
    convs = {"conv1": (32, c), "conv2": (32, 32), "conv3": (64, 32), "conv4": (64, 64)}
    fcs = {"fc1": (200, 64 * side * side), "fc2": (200, 200), "fc3": (k, 200)}
    keys = {}
    for name, (cout, cin) in convs.items():
        keys |= {f"feature_extractor.{name}.weight": (cout, cin, 3, 3), f"feature_extractor.{name}.bias": (cout,)}
    for name, (cout, cin) in fcs.items():
        keys |= {f"classifier.{name}.weight": (cout, cin), f"classifier.{name}.bias": (cout,)}
    return keys


def layout_of(model):
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_registries_list_every_architecture_and_head():
    assert MODELS.names() == sorted(ARCHS)
    assert HEADS.names() == ["cosine", "linear", "prototype"]


@pytest.mark.parametrize("head", ["linear", "cosine", "prototype"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_and_features_agree_for_every_head(arch, head):
    torch.manual_seed(0)
    for channels, size in [(1, 28), (3, 32)]:
        model = create(arch, num_classes=7, head=head, in_channels=channels, image_size=size).eval()
        x = images(channels=channels, size=size)
        with torch.no_grad():
            logits = model(x)
            features, logits_again = model.forward_features(x)
        assert model.feature_dim == FEATURE_DIM[arch]
        assert logits.shape == (2, 7) and features.shape == (2, FEATURE_DIM[arch])
        torch.testing.assert_close(logits_again, logits)
        torch.testing.assert_close(model.head(features), logits)
        assert model.head is model.get_submodule(HEAD_PATH[arch])
        assert not any(key.startswith("head.") for key in model.state_dict())


@pytest.mark.parametrize("arch", ["resnet18", "preact-resnet18"])
def test_resnets_take_64x64_inputs(arch):
    with torch.no_grad():
        assert create(arch, num_classes=200).eval()(images(size=64)).shape == (2, 200)


@pytest.mark.parametrize(
    "arch, kwargs, expected",
    [
        ("resnet18", {}, resnet18_layout()),
        ("resnet18", {"in_channels": 1, "num_classes": 4}, resnet18_layout(k=4, c=1)),
        ("preact-resnet18", {}, preact_layout()),
        ("wrn-34-10", {}, wrn_layout(34)),
        ("wrn-28-10", {"num_classes": 100}, wrn_layout(28, k=100)),
        ("small-cnn", {"in_channels": 1, "image_size": 28}, small_cnn_layout()),
        ("small-cnn", {"in_channels": 3, "image_size": 32}, small_cnn_layout(c=3, side=5)),
    ],
)
def test_state_dict_matches_reference_layout(arch, kwargs, expected):
    assert layout_of(create(arch, normalization=None, **kwargs)) == expected


def test_reference_layouts_contain_the_named_keys():
    """Guards the generators above against drifting from the published key names."""
    resnet = {"layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_mean", "linear.weight"}
    assert resnet <= set(resnet18_layout())
    assert {"layer2.0.shortcut.0.weight", "bn.weight"} <= set(preact_layout())
    wrn = {"block1.layer.0.convShortcut.weight", "block1.layer.4.conv2.weight", "bn1.running_var", "fc.weight"}
    assert wrn <= set(wrn_layout())
    assert not any("sub_block1" in key for key in wrn_layout())
    small = {"feature_extractor.conv1.weight", "classifier.fc1.weight", "classifier.fc3.bias"}
    assert small <= set(small_cnn_layout())


@pytest.mark.parametrize("arch, count", [("resnet18", 11_173_962), ("wrn-34-10", 46_160_474)])
def test_parameter_counts_match_the_papers(arch, count):
    assert sum(p.numel() for p in create(arch).parameters()) == count


def test_small_cnn_linear_head_starts_at_zero_like_the_reference():
    head = create("small-cnn", in_channels=1, image_size=28).head
    assert head.weight.abs().sum() == 0 and head.bias.abs().sum() == 0


@pytest.mark.parametrize("arch", ["resnet18", "small-cnn"])
def test_normalization_is_applied_inside_and_kept_out_of_the_state_dict(arch):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    plain = create(arch).eval()
    normalized = create(arch, normalization=(mean, std)).eval()
    assert set(normalized.state_dict()) == set(plain.state_dict())
    normalized.load_state_dict(plain.state_dict())  # strict: reference checkpoints load as they are
    x = images()
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():  # features, since small-cnn's zero-initialized head outputs zeros
        torch.testing.assert_close(normalized.forward_features(x)[0], plain.forward_features(by_hand)[0])
        assert not torch.allclose(normalized.forward_features(x)[0], plain.forward_features(x)[0])


@pytest.mark.parametrize("normalization", [((0.5,), (0.5,)), ((0.5,) * 3, (0.0, 1.0, 1.0)), "imagenet"])
def test_bad_normalization_raises_config_error(normalization):
    with pytest.raises(ConfigError, match="normalization"):
        create("small-cnn", normalization=normalization)


def test_prototypes_lie_on_the_alpha_sphere_and_learn():
    model = create("small-cnn", head="prototype", alpha=2.5, num_classes=5)
    prototypes = model.head.prototypes()
    torch.testing.assert_close(prototypes.norm(dim=1), torch.full((5,), 2.5))
    assert set(dict(model.head.named_parameters())) == {"weight"}
    model(images()).sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_cosine_head_uses_unit_rows_with_straight_through_gradient():
    torch.manual_seed(0)
    model = create("small-cnn", head="cosine", scale=8.0, num_classes=5)
    head = model.head
    with torch.no_grad():
        head.weight.mul_(torch.linspace(0.5, 3.0, 5).unsqueeze(1))  # rows drift off the sphere
        head.bias.uniform_(-0.1, 0.1)
    features = torch.randn(4, 200)
    target = torch.tensor([0, 1, 2, 3])
    F.cross_entropy(head(features), target).backward()

    unit_rows = F.normalize(head.weight.detach(), dim=1).requires_grad_()
    reference = 8.0 * (F.normalize(features, dim=1) @ unit_rows.T + head.bias.detach())
    F.cross_entropy(reference, target).backward()
    torch.testing.assert_close(head(features), reference)
    torch.testing.assert_close(head.weight.grad, unit_rows.grad)

    head.project_()
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5))


def test_unknown_names_and_head_options_raise_config_error_with_choices():
    with pytest.raises(ConfigError, match="resnet18"):
        create("resnet-18")
    with pytest.raises(ConfigError, match="cosine"):
        create("small-cnn", head="cos")
    with pytest.raises(ConfigError, match="valid options: scale"):
        create("small-cnn", head="cosine", alpha=2.0)
    with pytest.raises(ConfigError, match="valid options: init_std"):
        create("small-cnn", scale=8.0)


def test_linear_head_init_std():
    assert create("small-cnn").head.weight.abs().sum() == 0, "the TRADES reference's zero head by default"
    torch.manual_seed(0)
    head = create("small-cnn", init_std=0.01).head
    assert head.init_std == 0.01 and head.bias.abs().sum() == 0
    assert abs(head.weight.std().item() - 0.01) < 0.001 and abs(head.weight.mean().item()) < 0.001
    assert create("resnet18", init_std=0.0).head.weight.abs().sum() == 0
    with pytest.raises(ConfigError, match="init_std"):
        create("small-cnn", init_std=-1.0)


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_matches_contiguous(arch):
    model = create(arch).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        actual = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("head", ["linear", "cosine", "prototype"])
@pytest.mark.parametrize("arch", ["small-cnn", "preact-resnet18"])
def test_bf16_autocast_runs_forward_and_backward(arch, head):
    model = create(arch, head=head, normalization=((0.5,) * 3, (0.25,) * 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features, logits = model.forward_features(images())
        loss = F.cross_entropy(logits.float(), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss) and features.shape == (2, model.feature_dim)
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("name,stages", [
    ("resnet18", ["layer1", "layer2", "layer3", "layer4"]),
    ("preact-resnet18", ["layer1", "layer2", "layer3", "layer4"]),
    ("wrn-28-10", ["block1", "block2", "block3"]),
    ("small-cnn", ["feature_extractor.maxpool1", "feature_extractor.maxpool2", "classifier.relu1"]),
])
def test_forward_stages_returns_every_stage_then_features_and_logits(name, stages):
    torch.manual_seed(0)
    model = create(name).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model.forward_stages(x)
    assert list(out) == [*stages, "features", "logits"]
    h, logits = model.forward_features(x)
    assert torch.allclose(out["features"], h) and torch.allclose(out["logits"], logits)
    assert all(v.shape[0] == 2 for v in out.values())
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules()), "hooks removed"
