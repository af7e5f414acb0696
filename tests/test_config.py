"""Config: recipes, overrides, validation messages, dataset-dependent autos."""

from pathlib import Path

import pytest

from advrep import config
from advrep.data import DatasetInfo
from advrep.errors import ConfigError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
MNIST = DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), "mnist", "none")
CIFAR = DatasetInfo("cifar10", 10, 3, 32, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), "cifar", "crop-flip")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_recipe_is_valid_and_named_after_its_contents(path):
    cfg = config.load(path)
    if path.name.startswith("quickstart"):
        return
    method, rest = cfg.method["name"], path.stem
    assert rest.startswith(method + "-"), "recipes are named <method>-<dataset>-<arch>.yaml"
    assert rest == f"{method}-{cfg.data.dataset}-{cfg.model.arch}"


def test_overrides_apply_in_order_and_parse_values(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: trades\ntrain: {epochs: 5}\n")
    cfg = config.load(recipe, ["--train.epochs=7", "--method.beta=3", "--threat.eps=8/255",
                               "--train.milestones=[0.3, 0.6]", "--data.download=false"])
    assert cfg.method == {"name": "trades", "attack_bn": "eval", "beta": 3.0}
    assert cfg.train.epochs == 7 and cfg.train.milestones == [0.3, 0.6]
    assert abs(cfg.threat.eps - 8 / 255) < 1e-12 and cfg.data.download is False


@pytest.mark.parametrize("override,message", [
    ("--train.epoch=3", "unknown config key 'train.epoch' (did you mean 'epochs'?); valid keys in 'train': epochs"),
    ("--train.optimizer=sgdd", "bad value 'sgdd' for 'train.optimizer' (did you mean 'sgd'?); valid values: sgd, adam"),
    ("--train.epochs=many", "bad value 'many' for 'train.epochs': expected int"),
    ("--method=tradez", "unknown method 'tradez' (did you mean 'trades'?); choose one of:"),
    ("--method.betaa=1", "unknown config key 'method.betaa' for method 'pgd-at'; valid keys: name, attack_bn"),
    ("--method.eps=0.1", "set the attack's eps with threat.eps, not method.eps"),
    ("--colour=red", "unknown config key 'colour'; valid keys: name, seed"),
    ("train.lr", "must look like --section.key=value"),
])
def test_bad_keys_and_values_name_the_problem_and_the_choices(override, message):
    with pytest.raises(ConfigError) as err:
        config.load(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_broken_yaml_and_missing_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_resolve_fills_the_dataset_threat_model():
    m = config.resolve(config.load(None), MNIST)
    assert (m.threat.eps, m.threat.step_size, m.threat.steps) == (0.3, 0.01, 40)
    assert (m.eval.pgd_steps, m.eval.pgd_step_size) == (40, 0.01)
    assert m.model.normalization == "none" and m.data.augment == "none" and m.train.val_steps == 40
    assert m.model.head == "linear", "auto head: the method's, else linear"
    c = config.resolve(config.load(None, ["--threat.eps=4/255"]), CIFAR)
    assert c.threat.eps == pytest.approx(4 / 255) and c.threat.steps == 10
    assert c.eval.pgd_step_size == pytest.approx(1 / 255), "the eval step scales with eps"
    assert c.model.normalization == "dataset" and c.data.augment == "crop-flip"
    assert c.name == "pgd-at-cifar10-resnet18"


def test_l1_threat_model_defaults_and_refusals():
    c = config.resolve(config.load(None, ["--threat.norm=L1"]), CIFAR)
    assert (c.threat.norm, c.threat.eps, c.threat.step_size) == ("L1", 12.0, 3.0), "RobustBench's CIFAR-10 L1"
    assert c.eval.pgd_step_size == 3.0
    m = config.resolve(config.load(None, ["--threat.norm=L1", "--threat.eps=10"]), MNIST)
    assert m.threat.eps == 10 and m.threat.step_size == 2.5
    with pytest.raises(ConfigError, match="default eps only for 32×32 colour images.*set threat.eps for mnist"):
        config.resolve(config.load(None, ["--threat.norm=L1"]), MNIST)
    with pytest.raises(ConfigError, match="exceeds the L1 diameter of mnist's images \\(784"):
        config.resolve(config.load(None, ["--threat.norm=L1", "--threat.eps=800"]), MNIST)
    with pytest.raises(ConfigError, match="eps_sweep|L1 diameter"):
        config.resolve(config.load(None, ["--threat.norm=L1", "--threat.eps=10", "--eval.eps_sweep=[1000]"]), MNIST)
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match="threat.eps"):
            config.load(None, ["--threat.norm=L1", f"--threat.eps={bad}"])
    with pytest.raises(ConfigError, match="L3"):
        config.load(None, ["--threat.norm=L3"])


def test_saved_config_round_trips(tmp_path):
    cfg = config.resolve(config.load(None, ["--method=trades"]), CIFAR)
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg


def test_on_and_off_mean_the_words_not_yaml_booleans(tmp_path):
    """YAML 1.1 reads off/on/no/yes as booleans; for a setting whose choices are words they stay
    the words, on the command line and in a recipe."""
    cfg = config.load(None, ["--train.amp=off", "--train.channels_last=on", "--train.compile=off"])
    assert (cfg.train.amp, cfg.train.channels_last, cfg.train.compile) == ("off", "on", "off")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  amp: off\n  channels_last: no\n")
    cfg = config.load(recipe, [])
    assert (cfg.train.amp, cfg.train.channels_last) == ("off", "off")
    with pytest.raises(ConfigError, match="bad value True for 'train.amp'"):
        config.load(None, ["--train.amp=on"])  # amp has no "on"
