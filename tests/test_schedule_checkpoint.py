"""Learning-rate schedules and the checkpoint files' integrity checks."""

import json

import pytest
import torch

from advrep import checkpoint
from advrep.config import TrainConfig
from advrep.errors import CheckpointError
from advrep.trainer import _epoch_line, lr_at


def test_piecewise_schedule_with_fractions_and_epochs():
    frac = TrainConfig(epochs=100, lr=0.1, schedule="piecewise", milestones=[0.5, 0.75], gamma=0.1)
    assert [lr_at(frac, e, 0.0) for e in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    epochs = TrainConfig(epochs=100, lr=0.1, schedule="piecewise", milestones=[75, 90])
    assert [lr_at(epochs, e, 0.5) for e in (74, 75, 89, 90)] == pytest.approx([0.1, 0.01, 0.01, 0.001])


def test_piecewise_milestone_inside_an_epoch_acts_at_its_step():
    """The quickstart's 0.75 of 2 epochs falls half-way through epoch 2: it was rounded to the
    end of training (epoch 2) and never acted."""
    quick = TrainConfig(epochs=2, lr=1e-3, schedule="piecewise", milestones=[0.75], gamma=0.1)
    assert [lr_at(quick, 0, 0.9), lr_at(quick, 1, 0.49), lr_at(quick, 1, 0.5), lr_at(quick, 1, 0.99)] \
        == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    tenth = TrainConfig(epochs=10, lr=0.1, schedule="piecewise", milestones=[0.3], gamma=0.1)
    assert [lr_at(tenth, 2, 0.999), lr_at(tenth, 3, 0.0)] == pytest.approx([0.1, 0.01])  # 0.3*10 = 3+4e-16


def test_the_epoch_line_shows_a_drop_inside_the_epoch():
    row = {"epoch": 2, "loss": 0.5, "lr": 1e-3, "lr_end": 1e-4, "train_time_s": 3.0}
    assert "lr 0.001->0.0001 " in _epoch_line(row, 2)
    assert "lr 0.001 " in _epoch_line({**row, "lr_end": 1e-3}, 2)


def test_cosine_and_cyclic_schedules():
    cos = TrainConfig(epochs=10, lr=0.2, schedule="cosine")
    assert lr_at(cos, 0, 0.0) == pytest.approx(0.2)
    assert lr_at(cos, 5, 0.0) == pytest.approx(0.1)
    assert lr_at(cos, 9, 1.0) == pytest.approx(0.0, abs=1e-12)
    cyc = TrainConfig(epochs=10, lr=0.2, schedule="cyclic", peak_epoch=0.4)
    assert lr_at(cyc, 0, 0.0) == 0.0
    assert lr_at(cyc, 2, 0.0) == pytest.approx(0.1)
    assert lr_at(cyc, 4, 0.0) == pytest.approx(0.2)
    assert lr_at(cyc, 7, 0.0) == pytest.approx(0.1)
    assert lr_at(TrainConfig(lr=0.05, schedule="constant"), 3, 0.3) == 0.05


def _saved(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    checkpoint.save(tmp_path, "last", model, {"epoch": 1}, opt)
    return model, opt


def test_round_trip_of_weights_and_optimizer_state(tmp_path):
    model, opt = _saved(tmp_path)
    state, meta, opt_state = checkpoint.load(tmp_path / "last.safetensors")
    assert meta["epoch"] == 1 and meta["format"] == checkpoint.FORMAT
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    fresh = torch.optim.SGD(torch.nn.Linear(3, 2).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(opt_state)
    for a, b in zip(fresh.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    assert not list(tmp_path.glob("*.tmp")), "no temporary files may stay behind"


def test_a_mixed_set_of_files_is_detected(tmp_path):
    _saved(tmp_path)
    other = tmp_path / "other"
    _saved(other)
    (tmp_path / "last.safetensors").write_bytes((other / "last.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not belong to its sidecar"):
        checkpoint.load(tmp_path / "last")


def test_damaged_files_give_clear_errors(tmp_path):
    _saved(tmp_path)
    raw = (tmp_path / "last.safetensors").read_bytes()
    (tmp_path / "last.safetensors").write_bytes(raw[:20])
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path / "last")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.load(tmp_path / "last")
    (tmp_path / "last.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not an advrep checkpoint"):
        checkpoint.load(tmp_path / "last")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing")
