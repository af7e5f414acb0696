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
