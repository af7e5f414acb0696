"""advrep used as a careless or hostile user would: bad settings, bad files, flags that do not
apply, Ctrl-C. Every case ends with exit status 2 (130 for Ctrl-C) and one ``advrep:`` line on
stderr, never a traceback, and nothing that existed before is lost. One example of each class
runs the real CLI as a subprocess; the siblings run in-process (the same ``main``).

Crashes, kills, full disks and concurrent writers: tests/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from advrep.cli import main
from advrep.runs import Run
from conftest import QUICKSTART as QUICK
from conftest import ROOT, tiny_command


def cli(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advrep", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})})


def one_error_line(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("advrep: error: "), stderr[-3000:]
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def refused(capsys, argv, *needles) -> str:
    """In-process: ``main(argv)`` returns 2 with one error line holding every needle."""
    assert main([str(a) for a in argv]) == 2
    return one_error_line(capsys.readouterr().err, *needles)


@pytest.fixture(scope="module")
def tiny_run(tiny_mnist, tmp_path_factory):
    """A finished tiny run, shared read-only by the evaluation cases."""
    run = tmp_path_factory.mktemp("hostile") / "run"
    assert main(tiny_command(tiny_mnist, run)) == 0
    return run


# ------------------------------------------- 1. evaluation never reports what it did not measure


@pytest.mark.slow
def test_an_attack_setting_that_cannot_attack_is_refused_before_anything_runs(tiny_run):
    before = (tiny_run / "report.json").read_text()
    proc = cli("eval", tiny_run, "--quiet", "--eval.pgd_step_size=-0.01", "--eval.attacks=[pgd]")
    assert proc.returncode == 2
    one_error_line(proc.stderr, "eval.pgd_step_size", "must be > 0")
    assert (tiny_run / "report.json").read_text() == before


@pytest.mark.slow
@pytest.mark.parametrize("override,needle", [
    ("--eval.pgd_steps=0", "eval.pgd_steps"), ("--eval.pgd_restarts=0", "eval.pgd_restarts"),
    ("--eval.cw_steps=0", "eval.cw_steps"), ("--eval.square_queries=-5", "eval.square_queries"),
    ("--eval.eps_sweep=[0.1,-0.2]", "eval.eps_sweep[1]"), ("--threat.eps=0", "threat.eps"),
    ("--threat.eps=8", "at most 1 (write 8/255, not 8)"), ("--threat.norm=L3", "threat.norm"),
    ("--eval.attacks=[autoattack] --eval.aa_version=custom", "eval.aa_attacks"), ("--eval.attacks=[pgd,pdg]", "did you mean 'pgd'"),
    ("--eval.n=0", "eval.n"), ("--eval.batch_size=0", "eval.batch_size"),
    ("--eval.attacks=[ra-soft]", "reverse attention"),
])
def test_every_attack_setting_is_checked_against_its_meaning(tiny_run, capsys, override, needle):
    refused(capsys, ["eval", tiny_run, "--quiet", *override.split()], needle)


@pytest.mark.slow
def test_no_attack_means_no_robust_accuracy(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--quiet", "--eval.attacks=[]", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert "robust_acc" not in report and set(report["attacks"]) == {"clean"}
    assert "no attack ran (no robust accuracy)" in capsys.readouterr().out


def test_non_finite_weights_stop_the_evaluation_naming_the_checkpoint(tiny_mnist, tmp_path):
    from advrep import models

    model = models.create("small-cnn", in_channels=1, image_size=28)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "nan.pt")
    proc = cli("eval", "--weights", tmp_path / "nan.pt", "--arch", "small-cnn", "--dataset", "mnist",
               "--data-dir", tiny_mnist, "--quiet", "--eval.attacks=[pgd]")
    assert proc.returncode == 2
    one_error_line(proc.stderr, "nan.pt", "non-finite logits")
    assert not (tmp_path / "report.json").exists()


# ------------------------------------------------ 2. every value is checked before a file is written


def test_a_bad_value_stops_training_before_the_run_directory_exists(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    proc = cli(*tiny_command(tiny_mnist, out, "--threat.eps=-0.3"))
    assert proc.returncode == 2
    one_error_line(proc.stderr, "threat.eps", "must be > 0")
    assert not out.exists()


@pytest.mark.parametrize("override,needle", [
    ("--train.batch_size=0", "train.batch_size"), ("--train.lr=-1", "train.lr"), ("--threat.eps=5", "at most 1"),
    ("--threat.steps=0", "threat.steps"), ("--train.epochs=0", "train.epochs"),
    ("--data.train_subset=-3", "data.train_subset"), ("--train.lr=nan", "finite"),
    ("--train.momentum=1.5", "train.momentum"), ("--train.val_every=0", "train.val_every"),
    ("--train.weight_decay=-1", "train.weight_decay"), ("--model.ra_weight=-2", "model.ra_weight"),
    ("--data.val_size=-1", "data.val_size"), ("--data.val_size=5000", "data.val_size"),
    ("--method=aalp", "reverse attention"), ("--eval.attacks=[fgsmm]", "did you mean 'fgsm'"),
])
def test_every_bad_training_value_is_refused_and_nothing_is_written(tiny_mnist, tmp_path, capsys, override, needle):
    out = tmp_path / "run"
    extra = [override, "--model.ra=true"] if override == "--method=aalp" else [override]
    refused(capsys, tiny_command(tiny_mnist, out, *extra), needle)
    assert not out.exists()


@pytest.mark.parametrize("text,needle", [
    ("data:\n  dataset: mnist\ndata:\n  dataset: cifar10\n", "appears twice"),
    ("data: mnist\n", "'data' must be a mapping"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n",
     "aliases"),
    ("train:\n  epochs: [3]\n", "train.epochs"),
    ("train: {epochs: 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "must hold a mapping"),
])
def test_a_yaml_recipe_is_taken_as_written_or_refused(tmp_path, capsys, text, needle):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    refused(capsys, ["train", "--config", recipe, "--out", tmp_path / "run"], needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_flags_that_do_not_apply_are_errors(tiny_run, tmp_path, capsys):
    refused(capsys, ["eval", tiny_run, "--train.epochs=3"], "does not apply to advrep eval")
    refused(capsys, ["analyze", tiny_run, "--method.beta=3"], "does not apply to advrep analyze")
    refused(capsys, ["train", "--resume", tiny_run, "--config", QUICK], "drop --config")
    refused(capsys, ["train", "--resume", tiny_run, "--model.arch=resnet18"], "cannot change when a run is resumed")
    refused(capsys, ["train", "--resume", tiny_run, "--method=trades"], "cannot change when a run is resumed")
    refused(capsys, ["train", "--config", QUICK, "--data.dataset.x=1"], "not a section")


# ----------------------------------------------------------------- 3. data errors are named at load


def _npz(folder: Path, x_train, y_train, x_test, y_test) -> Path:
    folder.mkdir()
    np.savez(folder / "train.npz", x=x_train, y=y_train)
    np.savez(folder / "test.npz", x=x_test, y=y_test)
    return folder


@pytest.mark.parametrize("case,needle", [
    ("empty", "holds no images"), ("unseen", "which no training image has"),
    ("one-class", "at least two classes"), ("float", "expected x uint8"),
])
def test_data_that_does_not_add_up_is_named_with_its_path(tmp_path, capsys, case, needle):
    img = np.zeros((8, 28, 28), np.uint8)
    labels = np.arange(8) % 4
    data = {"empty": (img[:0], labels[:0], img, labels), "unseen": (img, labels, img, labels + 1),
            "one-class": (img, labels * 0, img, labels * 0), "float": (img.astype(np.float32), labels, img, labels)}
    folder = _npz(tmp_path / "data", *data[case])
    line = refused(capsys, ["train", "--config", QUICK, "--data-dir", folder, "--data.dataset=npz",
                            "--data.val_size=2", "--out", tmp_path / "run"], needle)
    assert str(folder) in line
    assert not (tmp_path / "run").exists()


def test_a_data_cache_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    proc = cli("train", "--config", QUICK, "--out", tmp_path / "run", env={"ADVREP_DATA": str(tmp_path / "cache")})
    assert proc.returncode == 2
    one_error_line(proc.stderr, "is a file, not a folder", "ADVREP_DATA")


# ---------------------------------------------------- 5. advrep never overwrites what is not its own


def test_a_folder_that_is_not_a_run_is_refused_and_kept(tiny_mnist, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own notes\n")
    refused(capsys, tiny_command(tiny_mnist, mine), "not an advrep run")
    assert (mine / "config.yaml").read_text() == "my own notes\n" and sorted(os.listdir(mine)) == ["config.yaml"]
    (tmp_path / "file").write_text("x")
    refused(capsys, tiny_command(tiny_mnist, tmp_path / "file"), "is a file")
    refused(capsys, tiny_command(tiny_mnist, tmp_path / "file" / "sub"), "cannot write")


@pytest.mark.slow
def test_a_finished_run_is_never_restarted_over(tiny_run, tiny_mnist, capsys):
    before = (tiny_run / "last.safetensors").read_bytes()
    refused(capsys, tiny_command(tiny_mnist, tiny_run), "already holds a run", "--resume")
    assert (tiny_run / "last.safetensors").read_bytes() == before


# -------------------------------------------------------------------- 6. signals and the environment


@pytest.mark.slow
def test_ctrl_c_in_an_epoch_says_what_is_saved_and_how_to_continue(tiny_mnist, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "advrep", *tiny_command(tiny_mnist, out, "--train.epochs=200")]
    # the Ctrl-C of a terminal: a job started in the background of a shell without job control
    # (nohup ... &) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoints.json").is_file():
            time.sleep(0.2)
        time.sleep(0.3)  # well inside a later epoch
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith("advrep: interrupted; epoch ") and f"advrep train --resume {out}" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["startup", "evaluation", "eval-command"])
def test_ctrl_c_anywhere_else_is_one_line_too(tiny_mnist, tiny_run, tmp_path, monkeypatch, capsys, where):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "startup":
        monkeypatch.setattr("advrep.factory.load_data", interrupt)
        monkeypatch.setattr("advrep.trainer.load_data", interrupt)
        argv, expect = tiny_command(tiny_mnist, tmp_path / "run"), "nothing was written"
    elif where == "evaluation":
        monkeypatch.setattr("advrep.api.evaluate_images", interrupt)
        argv, expect = tiny_command(tiny_mnist, tmp_path / "run"), f"evaluate with: advrep eval {tmp_path / 'run'}"
    else:
        monkeypatch.setattr("advrep.api.evaluate_images", interrupt)
        argv, expect = ["eval", str(tiny_run), "--quiet"], "the same command reuses: advrep eval"
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("advrep: interrupted; ") and expect in err, err


@pytest.mark.slow
def test_a_relative_data_dir_works_from_any_folder(tiny_mnist, tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_mnist, work / "data")
    elsewhere.mkdir()
    proc = cli(*tiny_command(Path("data"), Path("run"), "--train.epochs=1", "--eval.after_train=false"), cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("eval", work / "run", "--quiet", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_nan_stop_then_a_resume_with_a_fixed_value_keeps_that_value(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_command(tiny_mnist, out, "--train.optimizer=sgd", "--train.lr=0.01", "--train.stop_after=1")) == 0
    assert main(["train", "--quiet", "--resume", str(out), "--train.lr=1e30"]) == 2  # the loss blows up in epoch 2
    one_error_line(capsys.readouterr().err, "NaN or infinite", "last good checkpoint")
    assert main(["train", "--quiet", "--resume", str(out), "--train.lr=0.01", "--train.stop_after=null"]) == 0
    saved = (out / "config.yaml").read_text()
    assert "lr: 0.01\n" in saved and [r["epoch"] for r in Run(out).metrics()] == [1, 2, 3]


@pytest.mark.slow
def test_a_run_without_a_validation_split_prints_no_validation_figure(tiny_mnist, tmp_path, capsys):
    argv = tiny_command(tiny_mnist, tmp_path / "run", "--data.val_size=0", "--train.epochs=1", "--eval.after_train=false")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "no validation split" in out and "-100" not in out, out
