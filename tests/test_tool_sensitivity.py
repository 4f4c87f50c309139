"""tools/sensitivity.py: a post-hoc detector's parameter swept on a finished run's files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_visualise import make_run

from ferlib import stages
from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("sensitivity", ROOT / "tools" / "sensitivity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_rescores_each_value_and_writes_nothing_of_the_run(tmp_path):
    run = make_run(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    tool = _tool()
    table = tool.sweep(str(run), "tknn", "k", [5, 20], protocols=("honest", "reference"))
    assert list(table["value"]) == [5, 20, 5, 20] and list(table["protocol"]) == ["honest"] * 2 + ["reference"] * 2
    data = stages.load_openset_data(str(run), "honest", seed=0)
    direct = openset_metrics(make_detector("tknn", k=20).fit_score(data.detector_view()), data.is_open)["auroc"]
    assert table.query("protocol == 'honest' and value == 20")["auroc"].item() == pytest.approx(direct)
    assert table["auroc"].nunique() > 1  # the parameter reaches the detector
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_cli_writes_the_table_beside_the_run(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert _tool().main(["--run-dir", str(run), "--detector", "knn", "--param", "k", "--values", "3", "7"]) == 0
    out = pd.read_csv(run / "sensitivity_knn_k.csv")
    assert list(out["value"]) == [3, 7] and np.isfinite(out["auroc"]).all()


@pytest.mark.parametrize(
    "detector,param,message",
    [("cycle", "lam", "trains on images"), ("tknn", "kk", "no parameter 'kk'"), ("nope", "k", "unknown detector")],
)
def test_refuses_what_it_cannot_sweep(tmp_path, detector, param, message):
    run = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        _tool().sweep(str(run), detector, param, [1])
