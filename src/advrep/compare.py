"""Runs side by side: ``advrep compare RUN_DIR... [--out DIR]``.

One table of the runs (method, architecture, epochs, training time, the threat model and
number of evaluated images, clean, FGSM, PGD, CW, AutoAttack and any other registered attack a
report holds, the corruption accuracy on the official CIFAR-10-C files (RobustBench's
``corruptions_acc``) and, in its own column, on advrep's generated corruptions
(``corruptions_generated_acc``, not comparable to it), the gradient-masking flags), read from
each run's ``config.yaml``, ``metrics.jsonl`` and
``report.json``; a value a run does not have shows as "–". Under it, for runs evaluated on the same
images, each run's difference to the first with the exact McNemar p-value on the per-sample robust
masks the reports store (:func:`paired`), and the runs that differ only in ``seed`` as mean ± sd
with the 95% interval across seeds (:func:`seed_groups`). Beside them, a table of the feature
geometry from each run's ``analysis/analysis.json`` (see :mod:`advrep.analysis`).

Written to ``--out`` (default: ``compare/`` beside the runs' common parent folder):

- ``compare.md``: both tables and the pictures below as PNG files beside it;
- ``compare.html``: the same as one self-contained page (pictures embedded as base64 data
  URIs, styles inline, no script, nothing fetched), to open in any browser or attach to a mail;
- ``compare.json``: every number behind the tables and pictures, with where it came from.

Pictures: robust accuracy against eps for every run on one chart (each run's ``eps_sweep``
from its report, with the clean accuracy at eps 0; for a run without one, PGD computed here at
``eps × EPS_MULTIPLES`` on ``--n`` test images; the legend says which), the training curves
from ``metrics.jsonl`` (loss, validation clean and robust accuracy per epoch), the
clean-to-adversarial distance per stage, and each run's 2-D embedding of clean and adversarial
features. A run without ``analysis/`` is analyzed first (``advrep analyze RUN_DIR --n N``, into
the run's own ``analysis/``, so the next comparison reuses it)::

    advrep compare runs/analysis/standard runs/analysis/pgd-at --out runs/analysis/compare
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from . import __version__
from .attacks import ATTACKS
from .errors import ConfigError

MISSING = "–"
EPS_MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # computed curves: around the run's own eps
# Attacks that always have a column (the field's usual table); any other registered attack gets
# one when some run's report holds it.
USUAL_ATTACKS = ("fgsm", "pgd", "cw", "autoattack")
GEOMETRY_COLUMNS = ("run", "images", "C clean", "C adv", "F_min clean", "F_min adv", "F_mean clean", "F_mean adv",
                    "min angle", "shift at features")


# ----------------------------------------------------------------------------- reading a run


def read_run(run_dir: Path) -> dict:
    """What a run directory holds: its config, metrics rows and report (None when absent)."""
    from .runs import Run

    run = Run.open(run_dir)
    return {"dir": run.path, "config": run.config(), "metrics": run.metrics(), "report": run.report()}


def labels(run_dirs: list[Path]) -> list[str]:
    """Short unique names: the folder name, with as many parent folders as it takes."""
    parts = [Path(os.path.abspath(d)).parts for d in run_dirs]
    for depth in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    raise ConfigError("the same run directory is listed twice")


def _pct(value) -> str:
    return MISSING if value is None else f"{100 * value:.1f}%"


def _duration(seconds: float | None) -> str:
    if not seconds:
        return MISSING
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 \
        else f"{seconds / 3600:.1f} h"


def checks_cell(report: dict) -> str:
    """A report's gradient-masking checks in one table cell ("all 6 pass", "FAIL: black_box")."""
    checks = report.get("checks")
    if not checks:
        return MISSING
    failed = [name for name, r in checks.items() if not r["passed"]]
    return f"FAIL: {', '.join(failed)}" if failed else f"all {len(checks)} pass"


def attack_columns(runs: list[dict]) -> list[str]:
    """The attacks with a column: the usual ones, then the others the reports hold, in the
    order they first appear."""
    seen = [name for run in runs for name in ((run["report"] or {}).get("attacks") or {})]
    extra = [n for n in dict.fromkeys(seen) if n in ATTACKS and n not in USUAL_ATTACKS]
    return [*USUAL_ATTACKS, *extra]


def table_row(label: str, run: dict, attack_names=USUAL_ATTACKS) -> dict:
    """The cells of the main table (strings) for one run, with a column per ``attack_names``."""
    cfg, rows, report = run["config"], run["metrics"], run["report"] or {}
    attacks = report.get("attacks", {})
    acc = lambda name: attacks[name]["acc"] if name in attacks else None  # noqa: E731
    epochs = f"{len(rows)} of {cfg.train.epochs}" if len(rows) != cfg.train.epochs else str(len(rows))
    if report.get("epoch") is not None:
        epochs += f" (eval: epoch {report['epoch']})"
    threat = MISSING
    if "threat_model" in report:
        eps = report["eps"]
        eps = f"{eps * 255:.3g}/255" if report["threat_model"] == "Linf" and eps < 0.1 else f"{eps:.4g}"
        threat = f"{report['threat_model']} {eps} ({report['n']})"
    # older reports stored the generated corruptions' mean as corruptions_acc: not RobustBench's number
    official = report.get("corruptions_acc") if report.get("corruptions", {}).get("source") != "generated" else None
    return {"run": label, "method": cfg.method["name"], "architecture": cfg.model.arch, "epochs": epochs,
            "train time": _duration(sum(r.get("train_time_s", 0) for r in rows)), "threat (n)": threat,
            "clean": _pct(report.get("clean_acc")),
            **{ATTACKS.get(name).title: _pct(acc(name)) for name in attack_names},
            "corruptions (official)": _pct(official),
            "corruptions (generated)": _pct(report.get("corruptions_generated_acc")), "masking checks": checks_cell(report)}


def geometry_row(label: str, analysis: dict) -> dict:
    """The cells of the feature-geometry table for one run's analysis."""
    g, stages = analysis["geometry"], analysis["stages"]
    shift = dict(zip(stages["stages"], stages["relative"])).get("features")
    return dict(zip(GEOMETRY_COLUMNS, (
        label, str(analysis["n"]), f"{g['clean']['compactness']:.3g}", f"{g['adv']['compactness']:.3g}",
        f"{g['clean']['fisher_min']:.2f}", f"{g['adv']['fisher_min']:.2f}", f"{g['clean']['fisher_mean']:.2f}",
        f"{g['adv']['fisher_mean']:.2f}", f"{analysis['angles']['min_deg']:.1f}°",
        MISSING if shift is None else f"{shift:.3f}")))


# ----------------------------------------------------------------------------- paired tests, seed groups


def _masks(report: dict) -> dict | None:
    return (report or {}).get("masks")


def paired(names: list[str], runs: list[dict], attack_names=USUAL_ATTACKS) -> tuple[list[dict], list[dict]]:
    """Each run against the first (the reference), on the per-sample robust masks of their
    reports: ``(table rows, facts)``. A cell is the difference in robust accuracy (run − reference,
    percentage points) with the exact McNemar p-value of the two models on the same images
    (:func:`advrep.stats.mcnemar_exact`: b = images robust for the run only, c = for the reference
    only). Reports made on other images (another digest or n) or without masks get "–"."""
    from .masks import decode_mask
    from .stats import mcnemar_exact

    columns = [("clean", "clean"), *((a, ATTACKS.get(a).title) for a in attack_names), ("worst_case", "worst case")]
    ref = _masks(runs[0]["report"])
    rows, facts = [], []
    for name, run in zip(names[1:], runs[1:]):
        masks = _masks(run["report"])
        row = {"run": f"{name} − {names[0]}"}
        same = bool(ref and masks and ref["images_sha1"] == masks["images_sha1"] and ref["n"] == masks["n"])
        for key, title in columns:
            if not same or key not in ref or key not in masks:
                row[title] = MISSING
                continue
            a, b = decode_mask(ref[key], ref["n"]), decode_mask(masks[key], masks["n"])
            only_run, only_ref = int((b & ~a).sum()), int((a & ~b).sum())
            diff, p = (only_run - only_ref) / ref["n"], mcnemar_exact(only_run, only_ref)
            row[title] = f"{100 * diff:+.1f} pts (p = {p:.2g})"
            facts.append({"run": name, "reference": names[0], "column": key, "difference": diff,
                          "only_run": only_run, "only_reference": only_ref, "n": ref["n"], "p_value": p})
        row["same images"] = "yes" if same else ("no masks" if not (ref and masks) else "no")
        rows.append(row)
    return rows, facts


def _without_seed(cfg) -> str:
    tree = cfg.to_dict()
    for key in ("seed", "name", "out_dir"):  # the run's name and folder follow from the seed's run, not the recipe
        tree.pop(key, None)
    return json.dumps(tree, sort_keys=True, default=str)


def seed_groups(names: list[str], runs: list[dict], attack_names=USUAL_ATTACKS) -> tuple[list[dict], list[dict]]:
    """Runs whose configs differ only in ``seed``, grouped: ``(table rows, facts)``, each metric
    as mean ± sd over the seeds with the 95% t interval of the mean (:func:`advrep.stats.seed_summary`)."""
    from .stats import seed_summary

    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault(_without_seed(run["config"]), []).append(i)
    metrics = [("clean", lambda r: r.get("clean_acc")),
               *((ATTACKS.get(a).title, lambda r, a=a: (r.get("attacks") or {}).get(a, {}).get("acc"))
                 for a in attack_names),
               ("worst case", lambda r: r.get("robust_acc"))]
    rows, facts = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        row = {"runs": ", ".join(names[i] for i in members),
               "seeds": ", ".join(str(runs[i]["config"].seed) for i in members)}
        fact = {"runs": [names[i] for i in members], "seeds": [runs[i]["config"].seed for i in members]}
        for title, read in metrics:
            values = [read(runs[i]["report"] or {}) for i in members]
            if any(v is None for v in values):
                row[title] = MISSING
                continue
            summary = seed_summary(values)
            fact[title] = summary
            lo, hi = summary["ci95"]
            row[title] = f"{100 * summary['mean']:.1f} ± {100 * summary['sd']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
        rows.append(row)
        facts.append(fact)
    return rows, facts


# ----------------------------------------------------------------------------- the pictures' data


def eps_curve(run: dict, n: int, overrides=(), progress: bool = False) -> dict:
    """``{"eps", "acc", "source"}``: the report's ``eps_sweep`` (with the clean accuracy at
    eps 0), else PGD at ``eps × EPS_MULTIPLES`` computed now on the first ``n`` test images."""
    report = run["report"] or {}
    if report.get("eps_sweep"):
        points = [(0.0, report["clean_acc"])] + [(r["eps"], r["acc"]) for r in report["eps_sweep"]]
        points = sorted(dict(points).items())
        return {"eps": [e for e, _ in points], "acc": [a for _, a in points],
                "source": f"report eps_sweep, n={report['n']}"}
    import torch

    from .analysis import load_run
    from .evaluation import eps_sweep

    cfg, model, _, splits, device = load_run(run["dir"], overrides, progress)
    ev = replace(cfg.eval, eps_sweep=[cfg.threat.eps * m for m in EPS_MULTIPLES])
    torch.manual_seed(cfg.seed)  # the attacks' random starts: the same curve every time
    swept = eps_sweep(model, splits.x_test[:n], splits.y_test[:n], cfg.threat, ev, device)
    return {"eps": [r["eps"] for r in swept], "acc": [r["acc"] for r in swept],
            "source": f"computed, PGD-{ev.pgd_steps}, n={len(splits.y_test[:n])}"}


def run_analysis(run: dict, n: int, embedding: str, overrides=(), progress: bool = False) -> tuple[dict, Path, str]:
    """``(analysis.json, its folder, source)``: the run's ``analysis/``, made first if absent."""
    from .analysis import analyze_run

    folder = run["dir"] / "analysis"
    if (folder / "analysis.json").is_file() and (folder / "embedding.png").is_file():
        return json.loads((folder / "analysis.json").read_text()), folder, f"from {folder}"
    result, folder = analyze_run(run["dir"], [*overrides, f"--eval.n={n}"], embedding=embedding, progress=progress)
    return result, folder, f"computed now into {folder}"


# ----------------------------------------------------------------------------- writing


def markdown_table(rows: list[dict]) -> list[str]:
    head = list(rows[0])
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r[c] for c in head) + " |" for r in rows)]


def html_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #bbb;padding:4px 8px;
text-align:right}th{background:#eee}td:nth-child(-n+3),th:nth-child(-n+3){text-align:left}
figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{color:#555;font-size:14px}"""


def write_html(path: Path, title: str, notes: list[str], tables: list[tuple[str, list[dict]]],
               figures: list[tuple[str, Path, str]]) -> None:
    parts = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{html.escape(n)}</p>" for n in notes)]
    for heading, rows in tables:
        parts += [f"<h2>{html.escape(heading)}</h2>", html_table(rows)]
    for heading, png, caption in figures:
        parts += [f"<h2>{html.escape(heading)}</h2>", f'<figure><img src="{data_uri(png)}" alt="{html.escape(heading)}">'
                  f"<figcaption>{html.escape(caption)}</figcaption></figure>"]
    path.write_text("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                    f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
                    + "\n".join(parts) + "\n</body></html>\n", encoding="utf-8")


def compare(run_dirs, out_dir: Path | None = None, n: int = 500, embedding: str = "tsne", overrides=(),
            progress: bool = False) -> Path:
    """Compare ``run_dirs``; write compare.md, compare.html, compare.json and the PNGs to
    ``out_dir``; return it. ``n`` images for what is computed here (eps curves, analyses)."""
    from . import plots

    if not run_dirs:
        raise ConfigError("advrep compare needs at least one run directory")
    t0 = time.time()
    run_dirs = [Path(d) for d in run_dirs]
    runs = [read_run(d) for d in run_dirs]
    names = labels(run_dirs)
    if out_dir is None:
        out_dir = Path(os.path.commonpath([os.path.abspath(d.parent) for d in run_dirs])) / "compare"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    curves = {name: eps_curve(run, n, overrides, progress) for name, run in zip(names, runs)}
    analyses = {name: run_analysis(run, n, embedding, overrides, progress) for name, run in zip(names, runs)}
    norms = {r["config"].threat.norm for r in runs}
    figures = [("Robust accuracy against eps", "eps_curves.png", plots.eps_curves(curves, "/".join(sorted(norms))),
                "Sources per run in the legend: the report's eps_sweep, or PGD computed by advrep compare."),
               ("Training curves", "training_curves.png",
                plots.training_curves({name: run["metrics"] for name, run in zip(names, runs)}),
                "From each run's metrics.jsonl; validation PGD uses the training threat model (train.val_steps)."),
               ("Clean-to-adversarial distance per stage", "stages.png",
                plots.stages_compare({name: a[0]["stages"] for name, a in analyses.items()}),
                "From each run's analysis (its attack in analysis.json)."), ]
    for _, file, fig, _ in figures:
        plots.save(fig, out_dir / file)
    embeddings = []
    for i, (name, (result, folder, source)) in enumerate(analyses.items()):
        file = f"embedding-{i + 1}.png"
        (out_dir / file).write_bytes((folder / "embedding.png").read_bytes())
        embeddings.append((f"Embedding: {name}", file, f"{result['embedding']['method']} of "
                           f"{result['embedding']['images']} clean and adversarial test images; {source}."))

    columns = attack_columns(runs)
    main_rows = [table_row(name, run, columns) for name, run in zip(names, runs)]
    pair_rows, pair_facts = paired(names, runs, columns) if len(runs) > 1 else ([], [])
    seed_rows, seed_facts = seed_groups(names, runs, columns)
    geo_rows = [geometry_row(name, a[0]) for name, a in analyses.items()]
    title = f"advrep compare: {', '.join(names)}"
    notes = [f"advrep {__version__}; {time.strftime('%Y-%m-%d %H:%M')}; runs: " + ", ".join(map(str, run_dirs)),
             "Accuracies from each run's report.json (robust = correct clean and under the attack); "
             f"{MISSING}: not in the report. train time: the sum of the epochs' train_time_s in metrics.jsonl.",
             f"Paired differences: each run minus {names[0]} in robust accuracy on the same images (the reports' "
             "per-sample masks), with the exact McNemar p-value (two-sided binomial test on the images robust for one "
             "model only). Seed groups: runs whose configs differ only in seed, mean ± sd over the seeds [95% t "
             "interval of the mean].",
             "Feature geometry from each run's analysis (advrep analyze): C = mean distance to the class mean, "
             "F = class-mean separation (min or mean over pairs) / C, min angle between class means or "
             "prototypes, shift = mean ‖h − h′‖ / mean ‖h‖ of the penultimate features."]
    pictures = [(t, f, c) for t, f, _, c in figures] + embeddings
    extra_tables = [t for t in (("Paired differences (exact McNemar)", pair_rows), ("Seed groups", seed_rows)) if t[1]]
    md = [f"# {title}", "", *(f"{note}\n" for note in notes), "## Runs", "", *markdown_table(main_rows), ""]
    for heading, rows in extra_tables:
        md += [f"## {heading}", "", *markdown_table(rows), ""]
    md += ["## Feature geometry", "", *markdown_table(geo_rows), ""]
    for heading, file, caption in pictures:
        md += [f"## {heading}", "", f"![{heading}]({file})", "", caption, ""]
    (out_dir / "compare.md").write_text("\n".join(md), encoding="utf-8")
    write_html(out_dir / "compare.html", title, notes, [("Runs", main_rows), *extra_tables,
                                                        ("Feature geometry", geo_rows)],
               [(h, out_dir / f, c) for h, f, c in pictures])
    facts = {"runs": {name: {"dir": str(run["dir"]), "eps_curve": curves[name], "analysis": analyses[name][2]}
                      for name, run in zip(names, runs)},
             "table": main_rows, "paired": pair_facts, "seed_groups": seed_facts, "geometry": geo_rows,
             "figures": [f for _, f, _ in pictures],
             "advrep_version": __version__, "time_s": round(time.time() - t0, 1)}
    (out_dir / "compare.json").write_text(json.dumps(facts, indent=1))
    return out_dir
