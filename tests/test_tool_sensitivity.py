"""tools/sensitivity.py: a post-hoc detector's parameter swept on a finished run's files."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scripts import load_script
from test_visualise import make_run

from ferlib import stages
from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector


def _tool():
    return load_script("tools/sensitivity.py")


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


def test_sweep_at_a_matched_open_share_scores_seeded_subsamples(tmp_path):
    run = make_run(tmp_path / "run")
    tool = _tool()
    full = stages.load_openset_data(str(run), "honest", seed=0)
    share = 0.5 * (1 + float(full.is_open.mean()))  # above the set's own: close rows are drawn
    table = tool.sweep(str(run), "tknn", "k", [5, 20], params=None, open_share=share, draws=2)
    assert list(table["draw"]) == [0, 0, 1, 1] and set(table["eval_subset"]) == {"all_matched"}
    assert (table["n_open"] == int(full.is_open.sum())).all()  # every open row kept
    assert (table["n_open"] / table["n"] - share).abs().max() < 1 / table["n"].min()
    again = tool.sweep(str(run), "tknn", "k", [5, 20], params=None, open_share=share, draws=2)
    pd.testing.assert_frame_equal(table, again)  # seeded
    plain = tool.sweep(str(run), "tknn", "k", [5, 20])
    assert (plain["n"] == len(full)).all() and (plain["draw"] == 0).all()


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


def _with_tuning_rows(run: Path, seed: int = 1) -> Path:
    """Give a ``make_run`` run close-set outputs on tuning rows (what stage 03 writes with
    ``eval_subset="tuning"``): the evaluation rows' arrays with fresh noise on the features."""
    table = pd.read_csv(run / "02_pseudo_labels" / "pseudo_labels.csv")
    z = np.load(run / "02_pseudo_labels" / "outputs.npz")
    rng = np.random.default_rng(seed)
    folder = run / "02_pseudo_labels" / stages.TUNING_DIR
    folder.mkdir()
    np.savez(
        folder / "outputs.npz",
        key=np.array("k"),
        path=np.array([f"valid/{i}.png" for i in range(len(table))]),
        label=table["label"].to_numpy(),
        target=table["target"].to_numpy(),
        is_open=table["is_open"].to_numpy(),
        source_index=np.arange(len(table)),
        class_names=z["class_names"],
        eval_logits=z["eval_logits"],
        eval_features=z["eval_features"] + rng.normal(0, 1.5, z["eval_features"].shape),
    )
    return run


def test_choose_on_the_tuning_set_picks_its_best_value_and_reports_the_whole_set(tmp_path, capsys):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    value, table = tool.choose(runs, "knn", "k", [1, 5, 25])
    assert set(table["eval_subset"]) == {"tuning", "all"} and set(table["run"]) == {"run0", "run1"}
    tuning = np.mean([tool.sweep(r, "knn", "k", [1, 5, 25], eval_subset="tuning")["auroc"] for r in runs], axis=0)
    assert value == [1, 5, 25][int(np.argmax(tuning))]
    reported = tool.sweep(runs[0], "knn", "k", [value])["auroc"].item()
    assert table.query("run == 'run0' and eval_subset == 'all' and value == @value")["auroc"].item() == reported
    assert tool.main(["--run-dir", *runs, "--detector", "knn", "--param", "k", "--values", "1", "5", "25",
                      "--choose-on", "tuning"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"chosen on tuning: k = {value}" in out
    assert "reported set" in out and "its mean AUROC on the reported set" not in out  # not without the flag
    for reported in ("all", "test"):  # the test split's rows are reported rows too
        with pytest.raises(ValueError, match=f"cannot choose on '{reported}'.*reported evaluation set"):
            tool.choose(runs, "knn", "k", [1], choose_on=reported)


def test_the_reported_numbers_are_scored_and_printed_only_when_asked(tmp_path, capsys):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    value, table = tool.choose(runs, "knn", "k", [1, 5], report=None)
    assert set(table["eval_subset"]) == {"tuning"}  # no reported row scored
    argv = ["--run-dir", *runs, "--detector", "knn", "--param", "k", "--values", "1", "5", "--choose-on", "tuning"]
    assert tool.main([*argv, "--out", str(tmp_path / "quiet.csv")]) == 0
    quiet = capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "quiet.csv")["eval_subset"]) == {"tuning"}
    assert tool.main([*argv, "--show-reported", "--out", str(tmp_path / "shown.csv")]) == 0
    shown = capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "shown.csv")["eval_subset"]) == {"tuning", "all"}
    rows = pd.read_csv(tmp_path / "shown.csv")
    mean = rows[(rows["eval_subset"] == "all") & (rows["value"] == value)]["auroc"].mean()
    assert f"its mean AUROC on the reported set: {mean:.3f}" in shown
    assert "its mean AUROC on the reported set" not in quiet and f"chosen on tuning: k = {value}" in quiet
    for bad in ("test", "all"):  # refused with a clear error, as the command line's exit status 2
        assert tool.main(argv[:-1] + [bad]) == 2
        assert f"cannot choose on '{bad}'" in capsys.readouterr().err


def test_choose_holds_the_given_settings_fixed(tmp_path, capsys):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    fixed = {"top_fraction": 0.3}
    _, table = tool.choose(runs, "pseudo_oe", "rounds", [1, 2], params=fixed)
    direct = tool.sweep(runs[0], "pseudo_oe", "rounds", [1, 2], params=fixed)
    got = table.query("run == 'run0' and eval_subset == 'all'")["auroc"].to_numpy()
    np.testing.assert_allclose(got, direct["auroc"].to_numpy())
    with pytest.raises(ValueError, match="top_fraction"):  # the fixed settings reach the detector
        tool.choose(runs, "pseudo_oe", "rounds", [1], params={"top_fraction": 1.5})
    argv = ["--run-dir", *runs, "--detector", "pseudo_oe", "--param", "rounds", "--values", "1", "2",
            "--choose-on", "tuning"]  # fmt: skip
    assert tool.main([*argv, "--params", "{'top_fraction': 0.3}"]) == 0
    assert tool.main([*argv, "--params", "[0.3]"]) == 2
    assert "--params must be a dict" in capsys.readouterr().err


def test_choose_takes_dict_values(tmp_path, capsys):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    value, table = tool.choose(runs, "pseudo_oe", "first_params", [{"k": 5}, {"k": 10}])
    assert value in ({"k": 5}, {"k": 10}) and set(table["setting"]) == {"{'k': 5}", "{'k': 10}"}
    argv = ["--run-dir", *runs, "--detector", "pseudo_oe", "--param", "first_params", "--values", "{'k': 5}",
            "{'k': 10}", "--choose-on", "tuning"]  # fmt: skip
    choice = tmp_path / "choice.txt"
    assert tool.main([*argv, "--choice-out", str(choice)]) == 0
    assert "chosen on tuning: first_params = {'k':" in capsys.readouterr().out
    assert ast.literal_eval(choice.read_text()) == value  # a script can chain the next step on it


def test_min_gain_keeps_the_incumbent_unless_another_value_beats_it_by_more(tmp_path):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    values = [1, 5, 25]
    _, table = tool.choose(runs, "knn", "k", values)
    tuning = table[table["eval_subset"] == "tuning"].groupby("value")["auroc"].mean()
    best, worst = int(tuning.idxmax()), int(tuning.idxmin())
    order = [worst] + [v for v in values if v != worst]  # the worst value as the incumbent
    gain = tuning[best] - tuning[worst]
    assert gain > 0
    assert tool.choose(runs, "knn", "k", order, min_gain=0.0)[0] == best
    assert tool.choose(runs, "knn", "k", order, min_gain=gain + 1e-9)[0] == worst
    assert tool.choose(runs, "knn", "k", order, min_gain=gain - 1e-9)[0] == best


def test_jobs_score_runs_in_child_processes_and_give_the_same_table(tmp_path, capsys):
    runs = [str(_with_tuning_rows(make_run(tmp_path / f"run{s}"), seed=s)) for s in (0, 1)]
    tool = _tool()
    values = [{"k": 5}, {"k": 10}]  # dict values survive the CSV round trip
    serial_value, serial = tool.choose(runs, "pseudo_oe", "first_params", values, params={"top_fraction": 0.3})
    value, table = tool.choose(runs, "pseudo_oe", "first_params", values, params={"top_fraction": 0.3}, jobs=2)
    assert value == serial_value and value in values
    keys = ["run", "eval_subset", "setting"]
    a, b = (t.sort_values(keys).reset_index(drop=True) for t in (serial, table))
    assert list(a[keys].itertuples(index=False)) == list(b[keys].itertuples(index=False))
    np.testing.assert_allclose(a["auroc"], b["auroc"])
    assert a["auroc"].nunique() > 1
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        tool.choose(runs, "knn", "k", [1], jobs=0)
    with pytest.raises(ValueError, match="top_fraction"):  # a child's error names its cause
        tool.choose(runs, "pseudo_oe", "rounds", [1], params={"top_fraction": 1.5}, jobs=2)
