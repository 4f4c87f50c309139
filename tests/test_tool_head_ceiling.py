"""tools/head_ceiling.py: the binary head trained on the true open rows, as a diagnostic."""

from __future__ import annotations

import pandas as pd
import pytest
from scripts import load_script
from test_visualise import make_run

from ferlib import stages
from ferlib.metrics import openset_metrics
from ferlib.openset import run_detectors
from ferlib.openset.binary_head import cross_fitted_binary_scores


def _tool():
    return load_script("tools/head_ceiling.py")


def test_ceiling_is_the_cross_fitted_head_on_the_truth_and_bounds_pseudo_oe(tmp_path):
    run = make_run(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    table = _tool().ceiling([str(run)], ["logistic", "mlp"])
    assert list(table["head"]) == ["logistic", "mlp"] and (table["run"] == "run").all()
    data = stages.load_openset_data(str(run), "honest", seed=0)
    direct = cross_fitted_binary_scores(data.features, data.train_features, data.is_open, 5, seed=0)
    assert table.loc[0, "auroc"] == pytest.approx(openset_metrics(direct, data.is_open)["auroc"])
    learned = run_detectors(data, ["pseudo_oe"], {}, {"seed": 0}, log=False)["pseudo_oe"].scores
    assert table.loc[0, "auroc"] >= openset_metrics(learned, data.is_open)["auroc"] - 1e-9
    assert table["open_share"].iloc[0] == pytest.approx(data.is_open.mean())
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_cli_writes_the_table_and_refuses_unknown_heads(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    tool = _tool()
    out = tmp_path / "ceiling.csv"
    assert tool.main(["--run-dir", str(run), "--heads", "logistic", "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 1 and "mean AUROC: penultimate/logistic" in capsys.readouterr().out
    assert tool.main(["--run-dir", str(run), "--heads", "forest"]) == 2
    assert "unknown binary head(s) ['forest']" in capsys.readouterr().err
    # a run whose stage 02 saved no pyramid features: the re-run is named, no traceback
    assert tool.main(["--run-dir", str(run), "--heads", "logistic", "--features", "pyramid"]) == 2
    assert "re-run stage 02 (predict_pseudo_labels) with pyramid=True" in capsys.readouterr().err
