"""advrep analyze and advrep compare: each metric on features with known answers, PCA and
t-SNE, both commands end to end on two real MNIST runs, and compare.html in headless Chromium."""

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from advrep import analysis, compare, config
from advrep.cli import main
from advrep.errors import ConfigError
from advrep.models import create
from advrep.readouts import Probe

approx = pytest.approx


# ----------------------------------------------------------------------------- geometry


def test_geometry_on_hand_made_clusters_weighs_every_class_the_same():
    # class 0: 4 points at distance 1 of (0, 0); class 1: 2 at distance 2 of (10, 0);
    # class 2: 2 at distance 3 of (0, 6); class 3 absent
    h = torch.tensor([[1., 0], [-1, 0], [0, 1], [0, -1], [10, 2], [10, -2], [3, 6], [-3, 6]])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    g = analysis.geometry(h, y, num_classes=4)
    assert g["compactness_per_class"] == [approx(1), approx(2), approx(3), None]
    assert g["compactness"] == approx(2.0)  # (1 + 2 + 3) / 3, not the per-sample mean 1.75
    sep = [10.0, 6.0, math.sqrt(10 ** 2 + 6 ** 2)]  # between the means (0,0), (10,0), (0,6)
    assert g["separation_min"] == approx(6.0)
    assert g["separation_mean"] == approx(sum(sep) / 3)
    assert g["fisher_min"] == approx(3.0)
    assert g["fisher_mean"] == approx(sum(sep) / 3 / 2)


def test_geometry_of_two_gaussian_clusters_at_a_known_distance():
    gen = torch.Generator().manual_seed(0)
    n, sigma, distance = 20000, 0.5, 8.0
    h = torch.cat([torch.randn(n, 2, generator=gen) * sigma,
                   torch.randn(n, 2, generator=gen) * sigma + torch.tensor([0.0, distance])])
    y = torch.arange(2).repeat_interleave(n)
    g = analysis.geometry(h, y, 2)
    radius = sigma * math.sqrt(math.pi / 2)  # mean of a 2-D isotropic Gaussian's distance to its centre
    assert g["compactness"] == approx(radius, rel=0.01)
    assert g["separation_min"] == g["separation_mean"] == approx(distance, abs=0.02)
    assert g["fisher_min"] == approx(distance / radius, rel=0.01)
    scaled = analysis.geometry(3 * h, y, 2)  # distances over distances: scale-free
    assert scaled["compactness"] == approx(3 * g["compactness"])
    assert scaled["fisher_min"] == approx(g["fisher_min"]) and scaled["fisher_mean"] == approx(g["fisher_mean"])


def test_geometry_needs_two_classes():
    with pytest.raises(ConfigError, match="at least two classes"):
        analysis.geometry(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), 10)


# ----------------------------------------------------------------------------- angles


def test_angle_matrix_of_orthogonal_and_known_vectors():
    orthogonal = analysis.angle_matrix(torch.tensor([[2.0, 0, 0], [0, 3, 0], [0, 0, 0.5]]))
    assert torch.allclose(orthogonal, 90 * (1 - torch.eye(3, dtype=torch.float64)))
    known = analysis.angle_matrix(torch.tensor([[1.0, 0], [0.5, math.sqrt(3) / 2], [-1, 0]]))
    assert torch.allclose(known, torch.tensor([[0, 60, 180], [60, 0, 120], [180, 120, 0]], dtype=torch.float64))


def _probe(h, y, head, k):
    return SimpleNamespace(clean=(h, torch.zeros(len(y), k)), y=y, model=SimpleNamespace(head=head))


def test_angles_of_class_means_skip_absent_classes():
    h = torch.tensor([[3.0, 1], [3, -1], [1, 5], [-1, 5]])  # class means (3, 0) and (0, 5)
    out = analysis.angles(_probe(h, torch.tensor([0, 0, 1, 1]), torch.nn.Linear(2, 3), k=3))
    assert out["vectors"] == "class means" and out["classes"] == [0, 1]
    assert out["matrix_deg"] == [[0, 90], [90, 0]]
    assert out["min_deg"] == approx(90) and out["mean_deg"] == approx(90)


def test_angles_of_a_prototype_head_use_its_prototypes_not_the_features():
    head = SimpleNamespace(prototypes=lambda: torch.tensor([[1.0, 0], [2, 2], [0, -1]]))
    h = torch.tensor([[3.0, 1], [3, -1], [1, 5], [-1, 5]])
    out = analysis.angles(_probe(h, torch.tensor([0, 0, 1, 1]), head, k=3))
    assert out["vectors"] == "prototypes" and out["classes"] == [0, 1, 2]
    assert out["matrix_deg"] == [[0, 45, 90], [45, 0, 135], [90, 135, 0]]
    assert out["min_deg"] == approx(45) and out["mean_deg"] == approx(90)


# ----------------------------------------------------------------------------- per stage, on a real model


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    model = create("small-cnn", in_channels=1, image_size=28).eval()
    x = torch.randint(0, 256, (24, 1, 28, 28), dtype=torch.uint8)
    return model, x, torch.arange(24) % 3


def _probe_with(model, x, y, x_adv):
    return Probe(model, x, y, norm="Linf", eps=0.3, step_size=0.1, steps=2, device="cpu", batch_size=10, x_adv=x_adv)


def test_identical_clean_and_adversarial_images_give_zero_distance_everywhere(small_model):
    model, x, y = small_model
    result, figures = analysis.analyze(_probe_with(model, x, y, x.float() / 255), ["feature_shift"], "pca")
    assert result["stages"]["stages"][-2:] == ["features", "logits"] and len(result["stages"]["stages"]) > 2
    assert result["stages"]["distance"] == [0.0] * len(result["stages"]["stages"])
    assert result["geometry"]["clean"] == result["geometry"]["adv"]
    assert result["readouts"]["feature_shift"]["mean_shift"] == 0.0
    assert result["embedding"]["points"] == 48 and set(figures) == {"embedding", "angles", "geometry", "stages"}


def test_stage_distance_at_the_features_is_the_mean_feature_distance(small_model):
    model, x, y = small_model
    x_adv = (x.float() / 255 + 0.2 * torch.sign(torch.randn(x.shape))).clamp(0, 1)
    result, _ = analysis.analyze(_probe_with(model, x, y, x_adv), (), "pca")
    with torch.no_grad():
        h, h_adv = model.forward_features(x.float() / 255)[0], model.forward_features(x_adv)[0]
    at = dict(zip(result["stages"]["stages"], result["stages"]["distance"]))
    rel = dict(zip(result["stages"]["stages"], result["stages"]["relative"]))
    assert at["features"] == approx((h - h_adv).norm(dim=1).mean().item(), rel=1e-5)
    assert rel["features"] == approx(at["features"] / h.norm(dim=1).mean().item(), rel=1e-5)
    assert result["readouts"] == {}


# ----------------------------------------------------------------------------- embeddings


def test_pca_finds_a_known_principal_axis():
    u = torch.tensor([1.0, 2, 2]) / 3  # first axis
    v = torch.tensor([4.0, 1, -3]) / math.sqrt(26)  # second, orthogonal to u
    t = torch.tensor([-2.0, -1, 1, 2])
    s = torch.tensor([1.0, -1, -1, 1])  # uncorrelated with t, smaller spread
    offset = torch.tensor([5.0, -1, 3])
    x = offset + t[:, None] * u + s[:, None] * v
    coords, comps, ratio = analysis.pca(x)
    assert torch.allclose(comps.float(), torch.stack([u, v]), atol=1e-6)  # signs: largest loading positive
    assert torch.allclose(coords.float(), torch.stack([t, s], 1), atol=1e-5)
    assert torch.allclose(ratio.float(), torch.tensor([10 / 14, 4 / 14]))


def test_conditional_p_is_calibrated_to_the_perplexity():
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    d2 = torch.cdist(x, x).square()
    p = analysis.conditional_p(d2, perplexity=8.0)
    assert torch.all(p.diagonal() == 0) and torch.allclose(p.sum(1), torch.ones(40, dtype=torch.float64))
    off = ~torch.eye(40, dtype=torch.bool)
    entropy = -(p[off].view(40, 39) * p[off].view(40, 39).log()).sum(1)
    assert torch.allclose(entropy, torch.full((40,), math.log(8.0), dtype=torch.float64), atol=1e-4)
    # p_{j|i} ∝ exp(−β_i d²_ij): log p is linear in d² along a row, with a negative slope
    logp, d = p[0, 1:].log(), d2[0, 1:]
    slopes = (logp[1:] - logp[0]) / (d[1:] - d[0])
    assert torch.allclose(slopes, slopes[0].expand_as(slopes), rtol=1e-6) and slopes[0] < 0


def test_tsne_separates_two_clusters_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 10, generator=gen), torch.randn(30, 10, generator=gen) + 6])
    label = torch.arange(2).repeat_interleave(30)
    y, kl = analysis.tsne(x, perplexity=10)
    d = torch.cdist(y, y).fill_diagonal_(math.inf)
    assert torch.equal(label[d.argmin(1)], label), "every point's nearest neighbour is in its own cluster"
    centres = torch.stack([y[label == c].mean(0) for c in (0, 1)])
    radius = max((y[label == c] - centres[c]).norm(dim=1).max() for c in (0, 1))
    assert (centres[0] - centres[1]).norm() > 2 * radius
    assert 0 <= kl < 2
    again, _ = analysis.tsne(x, perplexity=10)
    assert torch.equal(y, again)


# ----------------------------------------------------------------------------- t-SNE against scikit-learn


def _blobs(seed=0, per=25, dim=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randn(per, dim, generator=gen) + 5 * c for c in range(3)]).double()


def test_tsne_affinities_equal_scikit_learns():
    """The joint P of advrep's exact t-SNE is scikit-learn's (its _joint_probabilities: the same
    bisection on each row's entropy, symmetrized and normalized), to the bisection's tolerance."""
    from scipy.spatial.distance import squareform
    from sklearn.manifold._t_sne import _joint_probabilities

    x = _blobs()
    n, perplexity = len(x), 10.0
    d2 = torch.cdist(x, x).square()
    p = analysis.conditional_p(d2, perplexity)
    ours = ((p + p.T) / (2 * n)).numpy()
    theirs = squareform(_joint_probabilities(d2.numpy().astype(np.float32), perplexity, 0))
    off = ~np.eye(n, dtype=bool)
    assert np.allclose(ours[off], theirs[off], rtol=2e-3, atol=1e-7)


def test_tsne_objective_and_result_match_scikit_learns_exact_tsne():
    """advrep's KL(P‖Q) equals scikit-learn's objective at the same embedding, and reaches the
    minimum scikit-learn's exact t-SNE (same perplexity, exaggeration, iterations) reaches, with
    the same neighbourhoods kept (trustworthiness)."""
    from scipy.spatial.distance import squareform
    from sklearn.manifold import TSNE, trustworthiness
    from sklearn.manifold._t_sne import _joint_probabilities, _kl_divergence

    x = _blobs()
    n, perplexity = len(x), 10.0
    y, kl = analysis.tsne(x, perplexity=perplexity)
    p = _joint_probabilities(torch.cdist(x, x).square().numpy(), perplexity, 0)
    their_kl_at_ours, _ = _kl_divergence(y.numpy().ravel(), p, 1, n, 2)
    assert kl == pytest.approx(their_kl_at_ours, rel=1e-3)
    ref = TSNE(perplexity=perplexity, method="exact", init="pca", learning_rate=max(n / 12 / 4, 50.0),
               max_iter=1000, random_state=0).fit(x.numpy())
    assert kl <= 1.1 * ref.kl_divergence_ + 0.02, (kl, ref.kl_divergence_)
    assert trustworthiness(x.numpy(), y.numpy(), n_neighbors=5) >= \
        trustworthiness(x.numpy(), ref.embedding_, n_neighbors=5) - 0.02


# ----------------------------------------------------------------------------- compare, pieces


def _run(report, rows=(), epochs=2):
    return {"dir": Path("x"), "config": config.load(None, ["--method=trades", "--model.arch=resnet18",
                                                           f"--train.epochs={epochs}"]),
            "metrics": list(rows), "report": report}


def test_table_row_reads_every_column_and_marks_what_is_missing():
    def attack(acc):
        return {"acc": acc}

    report = {"clean_acc": 0.8123, "threat_model": "Linf", "eps": 8 / 255, "n": 1000, "epoch": 2,
              "attacks": {"fgsm": attack(0.6), "pgd": attack(0.5), "cw": attack(0.48), "autoattack": attack(0.45)},
              "autoattack_acc": 0.45, "corruptions_acc": 0.7, "corruptions_generated_acc": 0.65,
              "checks": {"eps_zero": {"passed": True}, "transfer": {"passed": False}}}
    row = compare.table_row("a", _run(report, [{"train_time_s": 100}, {"train_time_s": 50.5}]))
    assert list(row.values()) == ["a", "trades", "resnet18", "2 (eval: epoch 2)", "2.5 min", "Linf 8/255 (1000)",
                                  "81.2%", "60.0%", "50.0%", "48.0%", "45.0%", "70.0%", "65.0%", "FAIL: transfer"]
    bare = compare.table_row("b", _run(None, [{"train_time_s": 7}], epochs=3))
    assert list(bare.values()) == ["b", "trades", "resnet18", "1 of 3", "7 s", *["–"] * 9]
    # an old report's generated mean stored as corruptions_acc is not shown as RobustBench's
    old = compare.table_row("c", _run({"corruptions_acc": 0.9, "corruptions": {"source": "generated"}},
                                      [{"train_time_s": 7}], epochs=1))
    assert old["corruptions (official)"] == "–" and old["corruptions (generated)"] == "–"


def _masked_report(flags: dict, digest="d1", **keys):
    from advrep.masks import encode_mask

    n = len(next(iter(flags.values())))
    masks = {k: encode_mask(torch.tensor(v, dtype=torch.bool)) for k, v in flags.items()}
    attacks = {k: {"acc": sum(v) / n} for k, v in flags.items() if k not in ("clean", "worst_case")}
    return {"n": n, "clean_acc": sum(flags["clean"]) / n, "attacks": attacks,
            "masks": {"encoding": "bits", "n": n, "images_sha1": digest, **masks}, **keys}


def test_paired_differences_carry_the_exact_mcnemar_p_value():
    from scipy.stats import binomtest

    clean = [True] * 20
    ref = [True] * 6 + [False] * 14                       # 6 robust
    run = [True] * 4 + [False] * 2 + [True] * 9 + [False] * 5  # 13 robust: 9 only here, 2 only in ref
    runs = [_run(_masked_report({"clean": clean, "pgd": ref})), _run(_masked_report({"clean": clean, "pgd": run})),
            _run(_masked_report({"clean": clean, "pgd": run}, digest="other"))]
    rows, facts = compare.paired(["ref", "new", "elsewhere"], runs)
    (pgd,) = [f for f in facts if f["column"] == "pgd"]
    assert (pgd["only_run"], pgd["only_reference"], pgd["n"]) == (9, 2, 20)
    assert pgd["difference"] == pytest.approx(7 / 20)
    assert pgd["p_value"] == pytest.approx(binomtest(9, 11, 0.5).pvalue)
    assert rows[0]["PGD"] == f"+35.0 pts (p = {pgd['p_value']:.2g})" and rows[0]["clean"].startswith("+0.0 pts (p = 1")
    assert rows[0]["FGSM"] == "–", "an attack one report lacks"
    assert rows[1]["PGD"] == "–" and rows[1]["same images"] == "no", "other images: no pairing"


def test_runs_differing_only_in_seed_are_grouped_with_the_interval_across_seeds():
    from scipy import stats as sp

    def run(seed, pgd, epochs=2):
        r = _run({"clean_acc": 0.8, "robust_acc": pgd, "attacks": {"pgd": {"acc": pgd}}}, epochs=epochs)
        r["config"] = config.load(None, ["--method=trades", "--model.arch=resnet18", f"--train.epochs={epochs}",
                                         f"--seed={seed}"])
        return r

    runs = [run(0, 0.40), run(1, 0.44), run(2, 0.45), run(0, 0.30, epochs=5)]
    rows, facts = compare.seed_groups(["s0", "s1", "s2", "long"], runs)
    assert len(rows) == 1 and facts[0]["runs"] == ["s0", "s1", "s2"] and facts[0]["seeds"] == [0, 1, 2]
    pgd = facts[0]["PGD"]
    mean, sd = sum([0.40, 0.44, 0.45]) / 3, float(np.std([0.40, 0.44, 0.45], ddof=1))
    assert pgd["mean"] == pytest.approx(mean) and pgd["sd"] == pytest.approx(sd)
    assert pgd["ci95"] == pytest.approx(list(sp.t.interval(0.95, 2, loc=mean, scale=sd / math.sqrt(3))))
    assert rows[0]["PGD"].startswith(f"{100 * mean:.1f} ± {100 * sd:.1f}%") and rows[0]["FGSM"] == "–"


def test_eps_curve_from_the_report_adds_the_clean_accuracy_at_zero():
    report = {"clean_acc": 0.9, "n": 50, "eps_sweep": [{"eps": 0.2, "acc": 0.2}, {"eps": 0.1, "acc": 0.5}]}
    curve = compare.eps_curve(_run(report), n=10)
    assert curve == {"eps": [0.0, 0.1, 0.2], "acc": [0.9, 0.5, 0.2], "source": "report eps_sweep, n=50"}


def test_labels_are_short_and_unique():
    assert compare.labels([Path("a/x/std"), Path("a/y/pgd")]) == ["std", "pgd"]
    assert compare.labels([Path("a/x/run"), Path("a/y/run")]) == ["x/run", "y/run"]


# ----------------------------------------------------------------------------- end to end, real MNIST

N = 100


@pytest.fixture(scope="module")
def compared(mnist_runs, tmp_path_factory):
    """Copies of the session's standard and pgd-at runs; pgd-at analyzed with ``advrep analyze``
    (t-SNE), then both compared (standard's analysis made by compare, with PCA)."""
    root = tmp_path_factory.mktemp("analysis")
    runs = {}
    for method, src in mnist_runs.items():
        runs[method] = root / method
        runs[method].mkdir()
        for name in ("config.yaml", "metrics.jsonl", "best.json", "best.safetensors", "report.json"):
            shutil.copy(src / name, runs[method] / name)
    assert main(["analyze", str(runs["pgd-at"]), "--n", str(N), "--readouts=[feature_shift]", "--quiet"]) == 0
    out = root / "cmp"
    assert main(["compare", str(runs["standard"]), str(runs["pgd-at"]), "--n", str(N), "--embedding", "pca",
                 "--out", str(out), "--quiet"]) == 0
    return runs, out


def _analysis(run):
    return json.loads((run / "analysis" / "analysis.json").read_text())


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


@pytest.mark.slow
def test_analyze_writes_the_numbers_and_the_pictures(compared):
    runs, _ = compared
    a = _analysis(runs["pgd-at"])
    assert a["n"] == N and a["method"] == "pgd-at" and a["checkpoint"] == "best"
    assert a["embedding"]["method"] == "tsne" and a["embedding"]["points"] == 2 * N
    assert a["attack"] == {"name": "pgd", "norm": "Linf", "eps": 0.3, "step_size": 0.03, "steps": 20}
    assert set(a["readouts"]) == {"feature_shift"} and a["readouts"]["feature_shift"]["mean_shift"] > 0
    assert 0.9 < a["accuracy"]["clean"] <= 1 and 0.5 < a["accuracy"]["robust"] < a["accuracy"]["clean"]
    assert len(a["angles"]["matrix_deg"]) == 10 and 0 < a["angles"]["min_deg"] <= a["angles"]["mean_deg"] < 180
    assert a["figures"] == ["embedding.png", "angles.png", "geometry.png", "stages.png"]
    assert all(_is_png(runs["pgd-at"] / "analysis" / f) for f in a["figures"])


@pytest.mark.slow
def test_adversarial_training_keeps_features_together_and_classes_apart(compared):
    runs, _ = compared
    std, adv = _analysis(runs["standard"]), _analysis(runs["pgd-at"])
    shift = {name: dict(zip(a["stages"]["stages"], a["stages"]["relative"]))["features"]
             for name, a in (("std", std), ("adv", adv))}
    assert shift["std"] > 1.5 * shift["adv"]
    assert adv["geometry"]["adv"]["fisher_mean"] > std["geometry"]["adv"]["fisher_mean"]


@pytest.mark.slow
def test_analyze_refuses_an_unknown_readout(compared, capsys):
    runs, _ = compared
    assert main(["analyze", str(runs["pgd-at"]), "--n", "10", "--readouts=[no_such]", "--quiet"]) == 2
    assert "no_such" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_writes_the_table_from_the_reports(compared):
    runs, out = compared
    md = (out / "compare.md").read_text()
    for method in ("standard", "pgd-at"):
        report = json.loads((runs[method] / "report.json").read_text())
        row = next(line for line in md.splitlines() if line.startswith(f"| {method} |")).split(" | ")
        assert row[1:4] == [method, "small-cnn", f"2 (eval: epoch {report['epoch']})"]
        assert row[5:9] == ["Linf 0.3 (500)", f"{100 * report['clean_acc']:.1f}%", "–",
                            f"{100 * report['attacks']['pgd']['acc']:.1f}%"]
        assert row[9:] == ["–", "–", "–", "–", "– |"]  # CW, AutoAttack, 2 corruption columns, checks: not run
    facts = json.loads((out / "compare.json").read_text())
    curves = {name: r["eps_curve"] for name, r in facts["runs"].items()}
    for curve in curves.values():
        assert curve["source"] == f"computed, PGD-20, n={N}" and curve["eps"] == approx([0.3 * m for m in compare.EPS_MULTIPLES])
        assert curve["acc"][0] >= curve["acc"][4] >= curve["acc"][-1]
    assert curves["pgd-at"]["acc"][4] > curves["standard"]["acc"][4] + 0.4  # at the trained eps 0.3
    assert facts["runs"]["pgd-at"]["analysis"].startswith("from ")
    assert facts["runs"]["standard"]["analysis"].startswith("computed now")
    assert all(_is_png(out / f) for f in facts["figures"]) and len(facts["figures"]) == 5


@pytest.mark.slow
def test_compare_html_is_self_contained(compared):
    _, out = compared
    page = (out / "compare.html").read_text()
    assert page.count("<img ") == 5 and page.count('src="data:image/png;base64,') == 5
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def _chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert Path(binary).is_file(), f"{binary} is missing: apt-get install -y chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


IMAGES = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])"


@pytest.mark.slow
def test_compare_html_opens_in_headless_chromium_with_every_image(compared, tmp_path):
    _, out = compared
    bad = tmp_path / "bad.html"  # the control: the checks below do see a console error and a broken image
    bad.write_text('<!DOCTYPE html><meta charset="utf-8"><title>bad</title>'
                   '<img src="data:image/png;base64,AAAA"><script>console.error("boom")</script>')
    driver = _chromium(tmp_path / "profile")
    try:
        driver.get(bad.as_uri())
        assert driver.execute_script(IMAGES) == [[True, 0]]
        assert any(e["level"] == "SEVERE" and "boom" in e["message"] for e in driver.get_log("browser"))
        driver.get((out / "compare.html").as_uri())
        assert driver.title == "advrep compare: standard, pgd-at"
        images = driver.execute_script(IMAGES)
        log = driver.get_log("browser")
    finally:
        driver.quit()
    assert len(images) == 5 and all(complete and width > 0 for complete, width in images), images
    assert [e for e in log if e["level"] in ("SEVERE", "WARNING")] == []
