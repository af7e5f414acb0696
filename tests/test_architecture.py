"""The package's seams: no import cycles, a registry of evaluation attacks that every consumer
reads (a new attack is one file), the threat model as one value, and declared method needs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from advrep import attacks, compare, config, evaluation, methods, models
from advrep.attacks import ATTACKS, Attack, register_attack
from advrep.config import EvalConfig, ThreatConfig
from advrep.errors import ConfigError
from advrep.models import ra
from advrep.threat import Threat

SRC = Path(__file__).resolve().parents[1] / "src" / "advrep"


# ------------------------------------------------------------------------------ imports


def _module_graph() -> dict[str, set[str]]:
    """advrep's modules and the advrep modules each imports, anywhere in its body (a function's
    late import counts: it is the usual way a cycle is hidden; ``if TYPE_CHECKING:`` blocks do
    not, they never run)."""
    files = {}
    for f in SRC.rglob("*.py"):
        parts = list(f.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = f
    graph = {name: set() for name in files}
    for name, f in files.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        tree = ast.parse(f.read_text())
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING"]:
            block.body = []  # imports for type checkers only: never executed
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                while t not in files and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in files and t != name:
                    graph[name].add(t)
    return graph


def test_no_module_imports_itself_through_others():
    graph = _module_graph()
    assert "advrep.config" in graph and "advrep.methods.base" in graph

    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, f"import cycles through: {', '.join(sorted(cycles))}"


def test_methods_and_attacks_do_not_import_the_config():
    graph = _module_graph()
    for name, deps in graph.items():
        if name.startswith(("advrep.methods", "advrep.attacks", "advrep.models", "advrep.threat")):
            assert "advrep.config" not in deps, name


# -------------------------------------------------------------------- the attack registry


@pytest.fixture
def noise_attack():
    """A new evaluation attack, written as a user would in one file: uniform noise at eps."""

    @register_attack("test-noise")
    class Noise(Attack):
        title = "Noise"

        def label(self, ev):
            return "uniform noise"

        def perturb(self, model, x, y, *, threat, ev, num_classes, device):
            return (x + torch.empty_like(x).uniform_(-threat.eps, threat.eps)).clamp(0, 1)

    yield Noise
    del ATTACKS._items["test-noise"]


def _linear_mnist():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    return model, x, model(x.float() / 255).argmax(1)  # labels = its own predictions: clean 100%


def test_a_new_attack_is_one_registered_class_that_evaluation_config_and_compare_read(noise_attack):
    assert "test-noise" in ATTACKS.names()
    cfg = config.load(None, ["--eval.attacks=[test-noise,pgd]"])
    assert cfg.eval.attacks == ["test-noise", "pgd"]
    model, x, y = _linear_mnist()
    ev = EvalConfig(attacks=["test-noise"], pgd_steps=5, pgd_step_size=0.05, checks=False, corruptions="none")
    report = evaluation.evaluate(model, x, y, threat=ThreatConfig(eps=0.1), ev=ev, device="cpu", progress=False)
    assert report["attacks"]["test-noise"]["label"] == "uniform noise"
    assert report["clean_acc"] == 1.0 and report["robust_acc"] == report["attacks"]["test-noise"]["acc"]
    run = {"dir": Path("x"), "config": config.load(None), "metrics": [], "report": report}
    columns = compare.attack_columns([run])
    assert columns[-1] == "test-noise" and "Noise" in compare.table_row("a", run, columns)


def test_an_unknown_attack_fails_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match=r"unknown evaluation attack 'pdg' \(did you mean 'pgd'\?\); choose one of"):
        config.load(None, ["--eval.attacks=[fgsm,pdg]"])


def test_advrep_list_prints_the_attacks():
    out = subprocess.run([sys.executable, "-m", "advrep", "list", "attacks"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "attacks: " + ", ".join(ATTACKS.names())
    assert {"fgsm", "pgd", "cw", "mt", "square", "autoattack", "ra-soft"} <= set(ATTACKS.names())


def test_every_attack_has_the_uniform_docstring():
    for name in ATTACKS.names():
        module = sys.modules[type(ATTACKS.get(name)).__module__]
        doc = module.__doc__ or ""
        assert "Example::" in doc and "advrep eval" in doc, f"{module.__name__}: document {name} with an example"


def test_the_checks_white_box_reference_comes_from_the_registry():
    from advrep.checks import whitebox_mask

    t, f = torch.tensor([True, True]), torch.tensor([False, True])
    masks = {"clean": t, "pgd": t, "square": f, "autoattack": f}
    assert whitebox_mask(masks).tolist() == [True, True], "black-box attacks are not the white-box reference"
    assert not ATTACKS.get("square").whitebox and not ATTACKS.get("autoattack").whitebox


# ----------------------------------------------------------------------- the threat model


def test_the_threat_model_is_one_frozen_value_not_a_method_setting():
    threat = Threat(eps=0.3, step_size=0.01, steps=40)
    with pytest.raises(AttributeError):
        threat.eps = 0.1
    assert threat.scaled(0.5) == Threat(eps=0.15, step_size=0.005, steps=40)
    with pytest.raises(ConfigError, match="not a method setting"):
        methods.create("pgd-at", eps=0.3)
    with pytest.raises(ConfigError, match="set the attack's eps with threat.eps"):
        config.load(None, ["--method.eps=0.3"])
    assert "eps" not in methods.create("trades").hparams()


def test_the_eps_ramp_changes_the_threat_value_only(monkeypatch):
    seen = []
    method = methods.create("pgd-at")
    monkeypatch.setattr(method, "attack", lambda model, x, y, threat, **k: seen.append(threat) or x)
    model = models.create("small-cnn", in_channels=1, image_size=28)
    x, y = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    for factor in (0.25, 1.0):
        method.perturb(model, x, y, Threat(eps=0.3, step_size=0.01, steps=2).scaled(factor))
    assert [t.eps for t in seen] == pytest.approx([0.075, 0.3]) and method.hparams() == {"attack_bn": "eval"}


# -------------------------------------------------------------------- declared method needs


def test_method_needs_are_declared_and_applied_by_the_config():
    spat = methods.create("spat", s=5.0)
    assert spat.head == "cosine" and spat.head_args() == {"scale": 5.0}
    section = config.ModelConfig(arch="small-cnn")
    spat.check_model(section)
    assert section.head_args == {}, "check_model reads the model section, never writes it"
    cfg = config.load(None, ["--method=spat", "--method.s=5"])
    assert cfg.model.head_args == {"scale": 5.0}


@pytest.mark.parametrize("name", ["aalp"])
def test_methods_that_cannot_run_with_reverse_attention_refuse_it(name):
    assert not methods.create(name).supports_ra
    with pytest.raises(ConfigError, match=f"method '{name}' does not run on a model with reverse attention"):
        config.load(None, [f"--method={name}", "--model.ra=true"])


def test_every_other_method_and_combination_accepts_reverse_attention_or_says_why():
    names = [*methods.METHODS.names(), *(f"{b}+{t}" for b in methods.bases() for t in methods.TERMS.names())]
    for name in names:
        method = methods.create(name)
        if method.supports_ra and (methods.head_of(name) or "linear") == "linear":
            config.load(None, [f"--method={name}", "--model.ra=true"])  # accepted
        assert method.supports_ra == (name != "aalp"), name


def test_terms_reach_the_base_attack_only_through_declared_hooks():
    composite = methods.create("trades+anc")
    base = composite.base
    assert type(base).attack is methods.Method.attack and type(base).perturb is type(methods.create("trades")).perturb
    assert len(base.attack_hooks) == 1, "anc's attack-loss hook"
    assert methods.create("trades+anc", terms={"anc": {"attack_aux": False}}).base.attack_hooks == ()
    assert methods.create("trades+lp").base.attack_hooks == ()


def test_the_hook_leaves_an_attack_on_a_plain_model_as_it_was(monkeypatch):
    seen = {}
    monkeypatch.setattr(attacks, "pgd", lambda model, x, y, **k: seen.update(k) or x)
    model = models.create("small-cnn", in_channels=1, image_size=28)
    methods.create("pgd-at+anc").perturb(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), Threat())
    assert seen["loss"] == "ce", "no reverse attention: nothing to add to the attack"
    ra.enable(model)
    methods.create("pgd-at+anc").perturb(model, torch.rand(2, 1, 28, 28), torch.tensor([0, 1]), Threat())
    assert callable(seen["loss"]), "with reverse attention the auxiliary losses join the attack"
