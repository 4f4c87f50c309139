"""tools/rmd_decomposition.py and tools/pseudo_outliers.py: studies read from a finished run's files."""

from __future__ import annotations

import pytest
from scripts import load_script
from test_visualise import make_run

from ferlib import stages
from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector


def _tool():
    return load_script("tools/rmd_decomposition.py")


def test_decomposition_agrees_with_the_kit_and_the_library(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    out = _tool().decompose(str(run))
    data = stages.load_openset_data(str(run), "honest", seed=0)
    view = data.detector_view()
    # the class distance ranks as the kit's Mahalanobis detector, RMD as pytorch-ood's
    maha = openset_metrics(make_detector("mahalanobis").fit_score(view), data.is_open)["auroc"]
    rmd = openset_metrics(make_detector("rmd").fit_score(view), data.is_open)["auroc"]
    assert out["auroc_class_distance"] == pytest.approx(maha, abs=0.01)
    assert out["auroc_rmd"] == pytest.approx(rmd, abs=0.02)
    shares = [row["train_share"] for row in out["classes"].values()]
    assert sum(shares) == pytest.approx(1.0)
    assert _tool().main(["--run-dir", str(run)]) == 0
    assert "auroc_rmd_balanced_background" in capsys.readouterr().out


def test_pseudo_outlier_purity_tool_reads_the_truth_outside_the_detector(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    tool = load_script("tools/pseudo_outliers.py")
    table = tool.purity_table([str(run)], rounds=2, top_fraction=0.2)
    assert list(table["round"]) == [0, 1, 2]
    assert table["purity"].iloc[1:].between(0, 1).all() and table["auroc"].between(0, 1).all()
    data = stages.load_openset_data(str(run), "honest", seed=0)
    first = openset_metrics(make_detector("tknn").fit_score(data.detector_view()), data.is_open)["auroc"]
    assert table["auroc"].iloc[0] == pytest.approx(first)
    assert tool.main(["--runs", str(run), "--rounds", "1", "--out", str(tmp_path / "p.csv")]) == 0
    assert (tmp_path / "p.csv").is_file()
