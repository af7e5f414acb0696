"""advrep card: RobustBench's model_info keys from a report, and only comparable numbers in them."""

import json

import pytest

from advrep import card
from advrep.cli import main
from advrep.errors import ConfigError


def report(**keys):
    base = {"clean_acc": 0.85344, "threat_model": "Linf", "eps": 8 / 255, "n": 10000, "dataset": "cifar10",
            "architecture": "wrn-34-10", "method": "trades", "robust_acc": 0.52, "autoattack_acc": 0.5342,
            "autoattack": {"backend": "pyautoattack", "backend_version": "0.2.0", "version": "standard",
                           "attacks": ["apgd-ce", "apgd-t", "fab-t", "square"]},
            "cost": {"forward": 123, "backward": 45}}
    return {**base, **keys}


def test_card_has_robustbenchs_keys_and_values():
    info = card.card(report())
    assert list(info)[:len(card.KEYS)] == list(card.KEYS)
    assert info["clean_acc"] == "85.34" and info["autoattack_acc"] == "53.42" and info["eps"] == "8/255"
    assert info["architecture"] == "WideResNet-34-10" and info["dataset"] == "cifar10"
    assert info["number_forward_passes"] == 1 and info["additional_data"] is False
    assert info["link"] is None and info["reported"] is None
    assert info["advrep"]["autoattack"]["backend_version"] == "0.2.0"
    assert info["advrep"]["comparable_with_robustbench"] and info["advrep"]["evaluation_cost"]["forward"] == 123


def test_card_leaves_out_numbers_robustbench_would_not_compute():
    info = card.card(report(n=1000, autoattack={"version": "custom", "attacks": ["apgd-ce"]},
                            corruptions_generated_acc=0.7))
    assert "autoattack_acc" not in info and "corruptions_acc" not in info
    why = info["advrep"]["not_comparable_because"]
    assert any("custom" in w for w in why) and any("1000 of the 10000" in w for w in why)
    bare = card.card({k: v for k, v in report().items() if k not in ("autoattack", "autoattack_acc")})
    assert "autoattack_acc" not in bare and "no AutoAttack" in bare["advrep"]["not_comparable_because"][0]
    assert card.card(report(threat_model="L1", eps=12.0))["eps"] == "12"
    assert card.architecture_name("preact-resnet18") == "PreActResNet-18"


def test_card_command_writes_the_file(tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(report(corruptions_acc=0.7)))
    assert main(["card", str(tmp_path)]) == 0
    info = json.loads((tmp_path / "model_info.json").read_text())
    assert info["corruptions_acc"] == "70.00"
    assert "model card in" in capsys.readouterr().out
    assert main(["card", str(tmp_path / "missing")]) == 2
    assert "not found; evaluate first" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no 'threat_model'"):
        card.card({"clean_acc": 0.5})
