"""ferlib.tables and ferlib.published: collecting runs, the reproduction table, its files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import published, tables
from ferlib.io import write_csv, write_json
from ferlib.metrics import metrics_table

DETECTORS = ["msp", "cycle_loss"]


# --------------------------------------------------------------------------------------------
# published numbers


@pytest.mark.parametrize("dataset,metric", [("rafdb", "auroc"), ("rafdb", "fpr95"), ("ferplus", "auroc")])
def test_published_means_match_per_class_values(dataset, metric):
    frame = published.published_frame(dataset, metric)
    checked = 0
    for method in frame.columns:
        per_class = frame.loc[list(published.OPEN_ORDER), method]
        if per_class.isna().any():
            continue  # the paper gives only the mean (RAF-DB FPR@95 except Ours)
        assert abs(per_class.mean() - frame.loc["mean", method]) <= 0.002, method
        checked += 1
    assert checked >= 1


def test_published_frame_layout():
    frame = published.published_frame("RAF-DB", "AUROC")
    assert list(frame.index) == ["Sur", "Fea", "Dis", "Hap", "Sad", "Ang", "Neu", "mean"]
    assert list(frame.columns) == ["Base", "EOW", "PROS", "DIAS", "Ours"]
    assert frame.loc["Sur", "Ours"] == 0.918
    assert frame.loc["mean", "Base"] == 0.497
    assert published.published_frame("FER+", "auroc").loc["Neu", "PROS"] == 0.852
    fpr = published.published_frame("raf_db", "fpr95")
    assert fpr.loc["mean"].notna().all()
    assert fpr.loc["Sur", "Ours"] == 0.608 and math.isnan(fpr.loc["Sur", "Base"])
    assert published.PUBLISHED["rafdb"]["auroc"]["Ours"]["Neu"] == 0.917


def test_published_unknown():
    with pytest.raises(ValueError, match="no published numbers for data set"):
        published.published_frame("affectnet", "auroc")
    with pytest.raises(ValueError, match="no published 'fpr95' for ferplus"):
        published.published_frame("ferplus", "fpr95")


# --------------------------------------------------------------------------------------------
# fake runs: 2 open classes x 2 seeds, each from a synthetic scores table


def _scores_frame(rng, n=300):
    is_open = rng.random(n) < 0.35
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"img/{i}.png" for i in range(n)],
            "label": np.where(is_open, 2, rng.choice([0, 1, 3, 4, 5, 6], n)),
            "pseudo": rng.integers(0, 6, n),
            "is_open": is_open,
            "origin": "test",
            "msp": rng.normal(size=n),  # random
            "cycle_loss": is_open * 2.0 + rng.normal(size=n),  # separable-ish
        }
    )


@pytest.fixture
def runs_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "sweep"
    # fear before surprise on purpose: the table must follow the paper's order
    for open_class in ("fear", "surprise"):
        for seed in (0, 1):
            run = root / f"rafdb_{open_class}_s{seed}"
            frame = _scores_frame(rng)
            parts = [metrics_table(frame, DETECTORS, protocol) for protocol in ("honest", "reference")]
            write_csv(run / "metrics.csv", pd.concat(parts, ignore_index=True))
            write_json(
                run / "manifest.json",
                {"params": {"dataset": "rafdb", "open_class": open_class, "seed": seed}, "git": "abc"},
            )
    return root


def test_collect_runs(runs_dir):
    runs = tables.collect_runs(str(runs_dir / "*"))
    assert len(runs) == 4 * 2 * 2  # runs x detectors x protocols
    assert {"dataset", "open_class", "seed", "run", "auroc", "fpr95"} <= set(runs.columns)
    assert set(runs["open_class"]) == {"Fea", "Sur"}
    assert set(runs["seed"]) == {0, 1}
    assert set(runs["dataset"]) == {"rafdb"}
    assert runs["run"].nunique() == 4
    # the same runs found from the sweep folder, from metrics.csv paths, or a list of dirs
    assert len(tables.collect_runs(runs_dir)) == len(runs)
    assert len(tables.collect_runs(str(runs_dir / "**" / "metrics.csv"))) == len(runs)
    assert len(tables.collect_runs(sorted(runs_dir.iterdir()))) == len(runs)


def test_collect_runs_errors(tmp_path, runs_dir):
    with pytest.raises(ValueError, match="no run with a metrics.csv"):
        tables.collect_runs(str(tmp_path / "nothing" / "*"))
    bad = tmp_path / "bad"
    write_csv(bad / "metrics.csv", pd.DataFrame({"detector": ["msp"], "auroc": [0.5]}))
    with pytest.raises(ValueError, match="no manifest.json"):
        tables.collect_runs(bad)
    write_json(bad / "manifest.json", {"params": {"dataset": "rafdb", "seed": 0}})
    with pytest.raises(ValueError, match=r"params lack \['open_class'\]"):
        tables.collect_runs(bad)


def test_summary_table_statistics(runs_dir):
    runs = tables.collect_runs(runs_dir)
    summary = tables.summary_table(runs, "auroc", "honest")
    assert list(summary.index) == ["Sur", "Fea", "mean"]
    honest = runs[runs["protocol"] == "honest"]
    for det in DETECTORS:
        for oc in ("Sur", "Fea"):
            v = honest.loc[(honest["detector"] == det) & (honest["open_class"] == oc), "auroc"].to_numpy()
            assert len(v) == 2
            assert summary.loc[oc, f"{det}:mean"] == pytest.approx(np.mean(v))
            assert summary.loc[oc, f"{det}:std"] == pytest.approx(np.std(v, ddof=1))
            assert summary.loc[oc, f"{det}:n"] == 2
            assert summary.loc[oc, det] == f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"
        d = honest[honest["detector"] == det]
        per_seed = d.groupby("seed")["auroc"].mean().to_numpy()  # each seed's class average
        class_means = d.groupby("open_class")["auroc"].mean().to_numpy()
        assert summary.loc["mean", f"{det}:mean"] == pytest.approx(np.mean(class_means))
        assert summary.loc["mean", f"{det}:std"] == pytest.approx(np.std(per_seed, ddof=1))
    # the separable detector wins
    assert summary.loc["mean", "cycle_loss:mean"] > 0.85 > summary.loc["mean", "msp:mean"]


def test_summary_table_published_columns(runs_dir):
    runs = tables.collect_runs(runs_dir)
    summary = tables.summary_table(runs, "auroc", "honest")
    paper_cols = [f"paper:{m}" for m in published.METHODS]
    assert all(c in summary.columns for c in paper_cols)
    assert summary.loc["Sur", "paper:Ours"] == 0.918
    assert summary.loc["Fea", "paper:Base"] == 0.411
    # only two open classes ran: the paper's mean is taken over the same two
    assert summary.loc["mean", "paper:Ours"] == pytest.approx((0.918 + 0.907) / 2)
    fpr = tables.summary_table(runs, "fpr95", "reference")
    assert fpr.loc["Sur", "paper:Ours"] == 0.608
    assert math.isnan(fpr.loc["Sur", "paper:Base"])
    assert fpr.attrs["higher_is_better"] is False
    assert not any(
        c.startswith("paper:") for c in tables.summary_table(runs, "auroc", "honest", published=False).columns
    )


def test_summary_table_needs_a_protocol_when_there_are_several(runs_dir):
    runs = tables.collect_runs(runs_dir)
    with pytest.raises(ValueError, match="several protocols"):
        tables.summary_table(runs, "auroc")
    with pytest.raises(ValueError, match="no rows for protocol 'other'"):
        tables.summary_table(runs, "auroc", "other")


def test_summary_table_single_seed_has_no_std(runs_dir):
    runs = tables.collect_runs(runs_dir)
    one = runs[runs["seed"] == 0]
    summary = tables.summary_table(one, "auroc", "honest")
    assert summary["msp:std"].isna().all()
    assert "±" not in summary.loc["Sur", "msp"]


def test_write_tables(runs_dir, tmp_path):
    runs = tables.collect_runs(runs_dir)
    summary = tables.summary_table(runs, "auroc", "honest")
    paths = tables.write_tables(summary, tmp_path / "tables", "rafdb_auroc")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert all(p.is_file() for p in paths)
    csv, md, tex = paths

    back = pd.read_csv(csv)
    assert list(back["open"]) == ["Sur", "Fea", "mean"]
    assert "paper:Ours" in back.columns
    np.testing.assert_allclose(back["cycle_loss:mean"], summary["cycle_loss:mean"])

    latex = tex.read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}", r"cycle\_loss", "Ours"):
        assert token in latex
    # best of our detectors in bold on each of the three rows: the separable one
    assert latex.count(r"\mathbf") == 3
    best = f"{summary.loc['Sur', 'cycle_loss:mean']:.3f}"
    assert rf"\mathbf{{{best}}}" in latex

    markdown = md.read_text()
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("| open | msp | cycle_loss | paper:Base")
    assert len(lines) == 2 + 3
    assert markdown.count("**") == 2 * 3
    assert f"**{summary.loc['mean', 'cycle_loss']}**" in markdown
    assert not list((tmp_path / "tables").glob(".*.tmp"))


def test_bold_follows_the_metric_direction(runs_dir):
    runs = tables.collect_runs(runs_dir)
    fpr = tables.summary_table(runs, "fpr95", "honest")
    md = tables.to_markdown(fpr)
    best = fpr.loc["mean", ["msp:mean", "cycle_loss:mean"]].astype(float).idxmin()
    det = best.split(":")[0]
    assert f"**{fpr.loc['mean', det]}**" in md
    # bold="all" may pick a paper column; bold=None bolds nothing
    assert "**" not in tables.to_markdown(fpr, bold=None)
    assert tables.to_latex(fpr, bold="all").count(r"\mathbf") >= 3


def test_per_class_summary_figure_draws_the_table(runs_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ferlib import plots

    summary = tables.summary_table(tables.collect_runs(runs_dir), "auroc", "honest")
    fig = plots.per_class_summary(summary)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Sur", "Fea", "mean"]
    from matplotlib.container import BarContainer, ErrorbarContainer

    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)  # two seeds: std bars
    for det in summary.attrs["detectors"]:
        np.testing.assert_allclose(bars[det], summary[f"{det}:mean"].to_numpy(dtype=float))
    ours = [line for line in ax.get_lines() if line.get_label() == "paper: Ours"]
    assert len(ours) == 1  # RAF-DB: the paper's numbers are drawn
    np.testing.assert_allclose(ours[0].get_ydata(), summary["paper:Ours"].to_numpy(dtype=float))
    plt.close(fig)


def test_per_class_summary_keeps_every_detector_apart_in_the_legend():
    """21 detectors (the FERPlus sweep): every one in the legend, in several columns, and no
    two bars share both colour and hatch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from ferlib import plots

    names = [f"det{k}" for k in range(21)]
    rng = np.random.default_rng(0)
    summary = pd.DataFrame(
        {f"{d}:mean": rng.uniform(0.5, 1, 3) for d in names}, index=pd.Index(["Sur", "Fea", "mean"], name="open")
    )
    summary.attrs = {"detectors": names, "metric": "auroc"}
    fig = plots.per_class_summary(summary)
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == names
    assert legend._ncols >= 2
    looks = {(c.patches[0].get_facecolor(), c.patches[0].get_hatch()) for c in ax.containers}
    assert len(looks) == len(names)
    plt.close(fig)


def test_tuning_rows_beside_the_reported_ones_are_not_taken_for_a_second_seed(runs_dir):
    import warnings

    for metrics in runs_dir.rglob("metrics.csv"):
        frame = pd.read_csv(metrics)
        frame["eval_subset"] = "all"
        write_csv(metrics, pd.concat([frame, frame.assign(eval_subset="tuning")], ignore_index=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runs = tables.collect_runs(runs_dir)
    assert set(runs["eval_subset"]) == {"all", "tuning"}


def test_overview_has_one_row_per_detector_best_first_with_the_summaries_numbers(runs_dir):
    runs = tables.collect_runs(runs_dir)
    auroc = tables.summary_table(runs, "auroc", "honest")
    fpr = tables.summary_table(runs, "fpr95", "honest")
    ref = tables.summary_table(runs, "auroc", "reference")
    lines = tables.overview_markdown(auroc, fpr, ref).strip().split("\n")
    assert lines[0].split(" | ")[1:4] == ["Sur", "Fea", "mean ± std"]
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [r[0] for r in rows[:2]] == ["cycle_loss", "msp"]  # the separable detector first
    paper_rows = [r[0] for r in rows[2:]]
    assert paper_rows == [f"paper: {m}" for m in published.METHODS]

    def num(v):
        return f"{v:.3f}".replace("0.", ".", 1)

    best, other = rows[0], rows[1]
    assert best[1] == f"**{num(auroc.loc['Sur', 'cycle_loss:mean'])}**" and not other[1].startswith("**")
    assert best[3] == f"{num(auroc.loc['mean', 'cycle_loss:mean'])} ± {num(auroc.loc['mean', 'cycle_loss:std'])}"
    assert best[4].startswith(num(fpr.loc["mean", "cycle_loss:mean"]))
    assert best[5].startswith(num(ref.loc["mean", "cycle_loss:mean"]))


def test_collect_results_writes_the_overview(runs_dir, tmp_path):
    from ferlib.report import collect_results

    collect_results(str(runs_dir / "*"), out_dir=str(tmp_path / "tables"))
    text = (tmp_path / "tables" / "rafdb_overview.md").read_text()
    assert text.count("\n| cycle_loss |") == 1 and "reference AUROC mean ± std" in text


def test_collect_results_summarises_how_the_open_rows_pseudo_labels_spread(runs_dir, tmp_path):
    """From each run's stage 02 spread.csv (written by metrics.pseudo_label_spread_table): the
    distance from a uniform spread over seeds, and the class most open rows go to."""
    from ferlib.metrics import pseudo_label_spread_table
    from ferlib.report import collect_results

    names = ["neutral", "happiness", "sadness"]
    for run in sorted(runs_dir.iterdir()):
        seed = int(run.name[-1])
        # surprise: 70% (seed 0) or 80% (seed 1) of the open rows on neutral; fear: uniform
        if "surprise" in run.name:
            pseudo = [0] * (7 + seed) + [1] * (2 - seed) + [2] * 1
        else:
            pseudo = [0, 1, 2] * 3
        table = pd.DataFrame({"pseudo": pseudo, "is_open": True})
        spread = pseudo_label_spread_table(table, names)
        frame = spread.assign(n_open=spread.attrs["n_open"], tv_from_uniform=spread.attrs["tv_from_uniform"])
        write_csv(run / "02_pseudo_labels" / "spread.csv", frame)
    collect_results(str(runs_dir / "*"), out_dir=str(tmp_path / "tables"))
    got = pd.read_csv(tmp_path / "tables" / "rafdb_pseudo_label_spread.csv").set_index("open class")
    tv = [0.7 - 1 / 3, 0.8 - 1 / 3]
    assert got.loc["Sur", "TV from uniform"] == f"{np.mean(tv):.3f} ± {np.std(tv, ddof=1):.3f}"
    assert got.loc["Sur", "most open rows go to"] == "neutral" and got.loc["Sur", "its share"] == pytest.approx(0.75)
    assert got.loc["Fea", "TV from uniform"] == "0.000 ± 0.000"
    assert got.loc["Fea", "uniform share"] == pytest.approx(0.33)
    assert "| Sur |" in (tmp_path / "tables" / "rafdb_pseudo_label_spread.md").read_text()


def test_tables_compare_puts_sweeps_side_by_side(runs_dir, tmp_path, capsys):
    """Two sweeps (the second with one detector fewer): each gets its own tables, and the
    comparison's cells are each sweep's mean over classes ± std over seeds."""
    import shutil

    from ferlib.run import main

    other = tmp_path / "face"
    shutil.copytree(runs_dir, other)
    for metrics in other.rglob("metrics.csv"):
        frame = pd.read_csv(metrics)
        frame = frame[frame["detector"] != DETECTORS[-1]]
        frame["auroc"] = frame["auroc"] * 0.5
        frame.to_csv(metrics, index=False)
    out = tmp_path / "tables"
    assert main(["tables", str(runs_dir), str(other / "*"), "--compare", "--out", str(out)]) == 0
    assert (out / "sweep" / "rafdb_auroc_honest.md").is_file() and (out / "face" / "rafdb_auroc_honest.md").is_file()
    text = (out / "rafdb_comparison.md").read_text()
    assert "| detector | sweep: honest AUROC | sweep: FPR@95 | sweep: reference AUROC | face: honest AUROC |" in text
    a = tables.summary_table(tables.collect_runs(runs_dir), "auroc", "honest")
    b = tables.summary_table(tables.collect_runs(other), "auroc", "honest")
    det = DETECTORS[0]
    fmt = lambda t: f"{t.at['mean', f'{det}:mean']:.3f} ± {t.at['mean', f'{det}:std']:.3f}".replace("0.", ".")  # noqa: E731

    def cells(name: str) -> list[str]:
        line = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        return [c.strip() for c in line.strip().strip("|").split("|")]

    assert cells(det)[1] == fmt(a) and cells(det)[4] == fmt(b)
    assert cells(DETECTORS[-1])[1] != "" and cells(DETECTORS[-1])[4:7] == ["", "", ""]  # not in the second sweep


def _with_stage01(sweep: Path, **settings) -> None:
    """Give every run of a sweep a stage 01 record, as the runner writes it."""
    from ferlib.io import read_json

    for manifest in sweep.rglob("manifest.json"):
        m = read_json(manifest)
        m["stages"] = {"01_train_close_set": {"status": "finished", "params": settings}}
        write_json(manifest, m)


def test_compare_heads_each_sweep_by_its_network_and_draws_the_bars(runs_dir, tmp_path, capsys):
    """A comparison says which sweep is from face weights (its stage 01 record), two sweeps
    that would read the same are numbered rather than one hiding the other, and the honest
    AUROCs are drawn as bars."""
    import shutil

    from ferlib.report import comparison_long, sweep_labels
    from ferlib.run import main

    face = tmp_path / "face"
    shutil.copytree(runs_dir, face)
    _with_stage01(runs_dir, arch="smallface", input_size=32, epochs=6, pretrained=None)
    _with_stage01(
        face, arch="dlibface", input_size=112, epochs=20, pretrained="dlib", data_options={"max_train": 10000}
    )
    labels = sweep_labels([str(runs_dir), str(face / "*")])
    assert labels == [
        "sweep (smallface, 32 px, 6 epochs)",
        "face (dlibface from dlib weights, 112 px, 20 epochs, 10,000 training images)",
    ]
    assert sweep_labels([str(runs_dir), str(runs_dir / "*")]) == [f"1. {labels[0]}", f"2. {labels[0]}"]

    out = tmp_path / "tables"
    assert main(["tables", str(runs_dir), str(face / "*"), "--compare", "--out", str(out)]) == 0
    text = (out / "rafdb_comparison.md").read_text()
    assert f"| detector | {labels[0]}: honest AUROC |" in text and f"| {labels[1]}: honest AUROC |" in text
    assert (out / "rafdb_comparison.png").stat().st_size > 0 and (out / "rafdb_comparison.pdf").is_file()
    assert (out / "sweep" / "rafdb_auroc_honest.md").is_file() and (out / "face" / "rafdb_auroc_honest.md").is_file()
    from ferlib.report import compare_results

    compare_results({"x (a)": str(runs_dir), "x (b)": str(face)}, out_dir=str(tmp_path / "same"))
    assert (tmp_path / "same" / "1_x").is_dir() and (tmp_path / "same" / "2_x").is_dir()  # neither overwrites

    a = tables.summary_table(tables.collect_runs(runs_dir), "auroc", "honest")
    long = comparison_long({"a": a, "b": a})
    assert list(long.columns) == ["detector", "sweep", "mean", "std"] and len(long) == 2 * len(DETECTORS)
    first = long[long["sweep"] == "a"]
    assert first["mean"].is_monotonic_decreasing  # ranked by the first sweep
    det = DETECTORS[0]
    row = long[(long["sweep"] == "b") & (long["detector"] == det)].iloc[0]
    assert row["mean"] == pytest.approx(a.at["mean", f"{det}:mean"]) and row["std"] == pytest.approx(
        a.at["mean", f"{det}:std"]
    )


def test_grouped_bars_draws_one_bar_per_group_and_series_and_keeps_gaps():
    import matplotlib.pyplot as plt

    from ferlib import plots

    table = pd.DataFrame(
        {
            "x": ["ce", "rul", "esr", "ce", "rul"],
            "series": ["scratch"] * 3 + ["face"] * 2,
            "mean": [0.7, 0.68, 0.72, 0.8, 0.79],
            "std": [0.01, 0.02, np.nan, 0.0, 0.01],
        }
    )
    fig = plots.grouped_bars(table, x="x", series="series", ylabel="accuracy", chance=0.5)
    ax = fig.axes[0]
    bars = [p for p in ax.patches]
    assert len(bars) == 6  # 3 groups x 2 series; face's esr slot is there, empty
    heights = [b.get_height() for b in bars]
    assert heights[:3] == pytest.approx([0.7, 0.68, 0.72]) and heights[3:5] == pytest.approx([0.8, 0.79])
    assert np.isnan(heights[5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ce", "rul", "esr"]
    plt.close(fig)
    with pytest.raises(ValueError, match="column"):
        plots.grouped_bars(table.drop(columns="std"), x="x", series="series", ylabel="accuracy")
