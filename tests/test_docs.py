"""Docs that must not drift from the code."""

from pathlib import Path

import pytest

from advrep import config
from advrep.docs import methods_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_methods_page_is_generated_from_the_registry():
    page = (ROOT / "docs" / "methods.md").read_text()
    assert page == methods_markdown(), "regenerate: advrep list methods --markdown > docs/methods.md"


@pytest.mark.parametrize("method", ["pgd-at", "trades", "mart", "alp", "clp", "fgsm-rs"])
@pytest.mark.parametrize("setting", ["cifar10-resnet18", "cifar10-wrn-34-10", "mnist-small-cnn"])
def test_every_baseline_has_its_recipes(method, setting):
    path = ROOT / "configs" / f"{method}-{setting}.yaml"
    assert path.is_file(), f"missing recipe {path.name}"
    cfg = config.load(path)
    assert cfg.method["name"] == method
    header = path.read_text().splitlines()[0]
    assert header.startswith("#"), "a recipe starts with a comment naming the paper and its settings"


METHOD_PAGES = ["adv-dpnp", "ancra", "spat", "aalp", "adr"]


@pytest.mark.parametrize("page", METHOD_PAGES)
def test_every_method_page_has_a_faithfulness_table_whose_tests_exist(page):
    import re

    text = (ROOT / "docs" / f"{page}.md").read_text()
    assert "## Faithfulness" in text, f"docs/{page}.md needs its faithfulness table"
    table = text.split("## Faithfulness", 1)[1].split("\n## ", 1)[0]
    assert "| part | status |" in table
    defined = {m for f in (ROOT / "tests").glob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)}
    named = set(re.findall(r"`(?:tests/\w+\.py::)?(test_\w+)(?:\[[^\]]*\])?`", table))
    assert named, "the table names the tests that show each part"
    assert named <= defined, f"tests named in docs/{page}.md that do not exist: {sorted(named - defined)}"
