"""ferlib/openset/fraction.py and tools/open_fraction.py: detection against the open share."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector
from ferlib.openset.fraction import (
    match_open_share,
    open_fraction_study,
    subsample_close,
    subsample_open,
    summarise_fraction_study,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("fraction", [0.05, 0.13, 0.25])
def test_subsample_keeps_every_close_row_and_hits_the_share(fraction):
    is_open = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    rows = subsample_open(is_open, fraction, np.random.default_rng(0))
    assert len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    assert set(np.flatnonzero(~is_open)) <= set(rows)  # every close row kept
    n_open = int(is_open[rows].sum())
    assert n_open == max(1, round(fraction * 300 / (1 - fraction)))
    assert abs(is_open[rows].mean() - fraction) < 1 / len(rows)


def test_subsample_is_seeded_and_refuses_impossible_shares():
    is_open = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    a = subsample_open(is_open, 0.1, np.random.default_rng(1))
    assert np.array_equal(a, subsample_open(is_open, 0.1, np.random.default_rng(1)))
    assert not np.array_equal(a, subsample_open(is_open, 0.1, np.random.default_rng(2)))
    with pytest.raises(ValueError, match="its own open share is 0.250"):
        subsample_open(is_open, 0.5, np.random.default_rng(0))
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"in \(0, 1\)"):
            subsample_open(is_open, bad, np.random.default_rng(0))


def test_study_rescores_each_draw_on_its_own_rows(make_features_data):
    data = make_features_data(n_close=200, n_open=120, seed=3)
    table = open_fraction_study(data, ["msp", "tknn"], [0.05, 0.2], repeats=2, seed=7)
    assert len(table) == (2 * 2 + 1) * 2
    full = table[table["full"]]
    assert full["open_share"].unique() == pytest.approx([120 / 320])
    # a draw's numbers are those of the detector fitted on exactly that draw's rows
    row = table[(table["fraction"] == 0.2) & (table["repeat"] == 1) & (table["detector"] == "tknn")].iloc[0]
    rows = subsample_open(data.is_open, 0.2, np.random.default_rng([7, 200000, 1]))
    part = data.subset(rows)
    direct = openset_metrics(make_detector("tknn").fit_score(part.detector_view()), part.is_open)
    assert row["n_open"] == part.is_open.sum() and row["n_close"] == 200
    assert row["auroc"] == pytest.approx(direct["auroc"]) and row["fpr95"] == pytest.approx(direct["fpr95"])
    summary = summarise_fraction_study(table[~table["full"]])
    assert set(summary["draws"]) == {2}
    assert np.isfinite(summary["auroc_std"]).all()


def test_study_refuses_trained_detectors_and_unknown_names(make_features_data):
    data = make_features_data()
    with pytest.raises(ValueError, match="retrain for every draw"):
        open_fraction_study(data, ["cycle"], [0.1])
    with pytest.raises(ValueError, match="unknown detector"):
        open_fraction_study(data, ["nope"], [0.1])


def test_cli_writes_tables_and_figure(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_visualise import make_run

    run = make_run(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    spec = importlib.util.spec_from_file_location("open_fraction", ROOT / "tools" / "open_fraction.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "study"
    share = float(pd.read_csv(run / "02_pseudo_labels" / "pseudo_labels.csv")["is_open"].mean())
    fractions = [str(round(share / 4, 3)), str(round(share / 2, 3))]
    args = ["--runs", str(run), "--detectors", "msp", "knn", "--fractions", *fractions, "--repeats", "2"]
    args += ["--out", str(out)]
    assert tool.main(args) == 0
    summary = pd.read_csv(out / "open_fraction_summary.csv")
    assert len(summary) == 4 and (summary["draws"] == 2).all()
    assert (out / "open_fraction_auroc.png").stat().st_size > 0 and (out / "open_fraction_auroc.pdf").is_file()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert tool.main(["--runs", str(run), "--fractions", "0.99", "--out", str(out)]) == 2


@pytest.mark.parametrize("fraction", [0.3, 0.57, 0.84])
def test_subsample_close_keeps_every_open_row_and_hits_the_share(fraction):
    is_open = np.r_[np.zeros(900, bool), np.ones(100, bool)]
    rows = subsample_close(is_open, fraction, np.random.default_rng(0))
    assert len(np.unique(rows)) == len(rows) and np.all(np.diff(rows) > 0)
    assert set(np.flatnonzero(is_open)) <= set(rows)  # every open row kept
    assert int((~is_open[rows]).sum()) == max(1, round(100 * (1 - fraction) / fraction))
    assert abs(is_open[rows].mean() - fraction) < 1 / len(rows)
    with pytest.raises(ValueError, match="its own open share is 0.100"):
        subsample_close(is_open, 0.05, np.random.default_rng(0))


def test_match_open_share_draws_the_side_that_is_too_large():
    is_open = np.r_[np.zeros(600, bool), np.ones(200, bool)]  # own share .25
    up = match_open_share(is_open, 0.5, np.random.default_rng(0))
    assert int(is_open[up].sum()) == 200 and int((~is_open[up]).sum()) == 200  # close rows drawn
    down = match_open_share(is_open, 0.1, np.random.default_rng(0))
    assert int((~is_open[down]).sum()) == 600 and is_open[down].mean() == pytest.approx(0.1, abs=1 / len(down))
    assert np.array_equal(match_open_share(is_open, 0.25, np.random.default_rng(0)), np.arange(800))
