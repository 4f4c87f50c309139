"""tools/oracle_share.py: pseudo_oe with the true open share as its candidate share (diagnostic)."""

from __future__ import annotations

import pandas as pd
import pytest
from scripts import load_script
from test_visualise import make_run

from ferlib import stages
from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector


def _tool():
    return load_script("tools/oracle_share.py")


def test_oracle_is_pseudo_oe_with_the_true_share_and_writes_nothing_of_the_run(tmp_path):
    run = make_run(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    table = _tool().oracle([str(run)], [0.5, 1.0], {"rounds": 2})
    data = stages.load_openset_data(str(run), "honest", seed=0)
    share = data.is_open.mean()
    assert list(table["multiplier"]) == [0.5, 1.0] and table["open_share"].iloc[0] == pytest.approx(share)
    direct = make_detector("pseudo_oe", rounds=2, top_fraction=share, seed=0).score(data.detector_view())
    assert table["auroc"].iloc[1] == pytest.approx(openset_metrics(direct, data.is_open)["auroc"])
    assert table["top_fraction"].iloc[0] == pytest.approx(0.5 * share)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before


def test_estimate_is_pseudo_oes_own_share_estimate(tmp_path):
    from test_tool_sensitivity import _with_tuning_rows

    run = _with_tuning_rows(make_run(tmp_path / "run"), seed=0)
    table = _tool().oracle([str(run)], [1.0], {"rounds": 2}, estimate=True)
    data = stages.load_openset_data(str(run), "honest", seed=0)
    det = make_detector("pseudo_oe", rounds=2, share_multiplier=1.0, seed=0)
    det.score(data.detector_view())
    assert table["estimated_share"].iloc[0] == pytest.approx(det.shares_[-1])
    assert 0.0 <= det.shares_[-1] <= 1.0


def test_cli_writes_the_table_and_refuses_bad_params(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    out = tmp_path / "oracle.csv"
    assert _tool().main(["--run-dir", str(run), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == 1 and "mean AUROC: x1" in capsys.readouterr().out
    assert _tool().main(["--run-dir", str(run), "--params", "[1]"]) == 2
