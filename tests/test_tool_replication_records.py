"""tools/replication_records.py: the declared rule applied to per-run records, by code.

The records are written by hand here (the scoring itself is tools/sensitivity.py's ``sweep``,
tested in test_tool_sensitivity.py); what is tested is the rule: the choices read only the
tuning rows, the incumbent stays unless beaten by more than the margin, and the reported
metrics keep every other detector's rows and take pseudo_oe's from the chosen combination.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scripts import load_script

METRIC_COLUMNS = ["detector", "protocol", "auroc", "fpr95", "aupr_in", "aupr_out", "n_close", "n_open",
                  "close_acc", "eval_subset"]  # fmt: skip


def _tool():
    return load_script("tools/replication_records.py")


def _write_record(
    root: Path, open_class: str, seed: int, tuning: dict, reported: dict, matched: dict | None = None
) -> Path:
    """One record: ``tuning[(share, features)]`` honest tuning AUROC, ``reported[(share, features)]``
    honest reported AUROC (reference: 1 - that, so the two protocols differ)."""
    folder = root / f"ferplus_open-{open_class}_seed{seed}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps({"params": {"dataset": "ferplus", "open_class": open_class, "seed": seed}})
    )
    metrics = []
    for detector, auroc in (("msp", 0.61), ("pseudo_oe", 0.70)):
        for protocol in ("honest", "reference"):
            metrics.append([detector, protocol, auroc, 0.9, 0.8, 0.3, 100, 50, 0.8, "all"])
    metrics.append(["msp", "honest", 0.6, 0.9, 0.8, 0.3, 90, 10, 0.8, "tuning"])
    pd.DataFrame(metrics, columns=METRIC_COLUMNS).to_csv(folder / "metrics.csv", index=False)
    rows = []
    for (share, features), auroc in tuning.items():
        rows.append(["pseudo_oe", features, "honest", "tuning", 100, auroc, 0.5, 0.9, 0.4, 90, 10, share])
    for (share, features), auroc in (matched or {}).items():  # two draws around the value
        for delta in (-0.01, 0.01):
            rows.append(["pseudo_oe", features, "honest", "tuning_matched", 60, auroc + delta, 0.5, 0.9, 0.4, 40, 20,
                         share])  # fmt: skip
    for (share, features), auroc in reported.items():
        for protocol, value in (("honest", auroc), ("reference", 1 - auroc)):
            rows.append(["pseudo_oe", features, protocol, "all", 150, value, 0.5, 0.9, 0.4, 100, 50, share])
    settings = pd.DataFrame(
        rows,
        columns=["detector", "features", "protocol", "eval_subset", "n", "auroc", "fpr95", "aupr_in", "aupr_out",
                 "n_close", "n_open", "share_multiplier"],
    )  # fmt: skip
    settings["params"] = repr({"top_fraction": 0.2})
    settings.to_csv(folder / "pseudo_oe_settings.csv", index=False)
    return folder


COMBOS = [(0.0, "penultimate"), (1.0, "penultimate"), (0.0, "pyramid"), (1.0, "pyramid")]


def _records(root: Path, tuning_values, reported_values) -> Path:
    for i, (open_class, seed) in enumerate((("surprise", 3), ("fear", 3))):
        _write_record(
            root,
            open_class,
            seed,
            dict(zip(COMBOS, tuning_values[i])),
            dict(zip(COMBOS, reported_values[i])),
        )
    return root


# tuning: share 1.0 beats 0.0 by .03 (> .01); pyramid beats penultimate at share 1.0 by .005 (<= .01)
TUNING = [[0.80, 0.83, 0.79, 0.835], [0.70, 0.73, 0.71, 0.735]]
# reported: pyramid far ahead, and share 0 ahead: what a choice on the reported rows would take
REPORTED = [[0.95, 0.80, 0.99, 0.81], [0.94, 0.79, 0.98, 0.82]]


def test_choices_read_the_tuning_rows_only_and_keep_the_incumbent_within_the_margin(tmp_path):
    tool = _tool()
    root = _records(tmp_path / "records", TUNING, REPORTED)
    share, features = tool.report(root, tmp_path / "tables", expect=2, say=lambda *_: None)
    assert (share, features) == (1.0, "penultimate")
    steps = pd.read_csv(tmp_path / "tables" / "choices.csv")
    assert steps.loc[steps["chosen"], "candidate"].tolist() == ["1.0", "'penultimate'"]
    assert steps.loc[steps["step"] == 2, "share_multiplier"].eq(1.0).all()  # step 2 holds step 1's choice
    # reported rows changed beyond recognition: the same choice
    flipped = [[1 - v for v in run] for run in REPORTED]
    other = _records(tmp_path / "records2", TUNING, flipped)
    assert tool.report(other, tmp_path / "tables2", expect=2, say=lambda *_: None) == (1.0, "penultimate")
    # pyramid's tuning gain raised above the margin: now it is chosen
    raised = [[0.80, 0.83, 0.79, 0.845], [0.70, 0.73, 0.71, 0.745]]
    third = _records(tmp_path / "records3", raised, REPORTED)
    assert tool.report(third, tmp_path / "tables3", expect=2, say=lambda *_: None) == (1.0, "pyramid")
    # share's gain within the margin: the incumbent 0.0 stays
    close = [[0.80, 0.805, 0.79, 0.80], [0.70, 0.71, 0.71, 0.70]]
    fourth = _records(tmp_path / "records4", close, REPORTED)
    assert tool.report(fourth, tmp_path / "tables4", expect=2, say=lambda *_: None)[0] == 0.0


def test_reported_metrics_keep_every_other_row_and_take_pseudo_oe_from_the_chosen_combination(tmp_path):
    tool = _tool()
    root = _records(tmp_path / "records", TUNING, REPORTED)
    tool.report(root, tmp_path / "tables", expect=2, say=lambda *_: None)
    for i, name in enumerate(("ferplus_open-surprise_seed3", "ferplus_open-fear_seed3")):
        before = pd.read_csv(root / name / "metrics.csv")
        after = pd.read_csv(tmp_path / "tables" / "runs" / name / "metrics.csv")
        assert len(after) == len(before) and list(after.columns) == list(before.columns)
        others = lambda f: f[f["detector"] != "pseudo_oe"].reset_index(drop=True)  # noqa: E731
        pd.testing.assert_frame_equal(others(after), others(before))
        chosen = REPORTED[i][COMBOS.index((1.0, "penultimate"))]
        got = after[after["detector"] == "pseudo_oe"].set_index("protocol")["auroc"]
        assert got["honest"] == pytest.approx(chosen) and got["reference"] == pytest.approx(1 - chosen)
    table = pd.read_csv(tmp_path / "tables" / "ferplus_auroc_honest.csv")
    assert "pseudo_oe" in table.columns


def test_incomplete_or_mixed_records_are_refused(tmp_path):
    tool = _tool()
    root = _records(tmp_path / "records", TUNING, REPORTED)
    with pytest.raises(ValueError, match="2 complete record"):
        tool.report(root, tmp_path / "tables", expect=21, say=lambda *_: None)
    settings = root / "ferplus_open-fear_seed3" / "pseudo_oe_settings.csv"
    frame = pd.read_csv(settings)
    frame.assign(params=repr({"top_fraction": 0.3})).to_csv(settings, index=False)
    with pytest.raises(ValueError, match="different fixed settings"):
        tool.report(root, tmp_path / "tables", expect=2, say=lambda *_: None)
    frame[~((frame["features"] == "pyramid") & (frame["eval_subset"] == "tuning"))].to_csv(settings, index=False)
    with pytest.raises(ValueError, match="every combination's tuning row"):
        tool.report(root, tmp_path / "tables", expect=2, say=lambda *_: None)


def test_choose_on_the_matched_tuning_rows_reads_those_alone(tmp_path):
    """The same records, with matched tuning rows that favour the other candidates: the choice
    follows the rows it is told to read, averaged over the draws."""
    tool = _tool()
    root = tmp_path / "records"
    matched = [[0.70, 0.70, 0.75, 0.70], [0.60, 0.605, 0.65, 0.60]]  # share within margin; pyramid +.05 at 0.0
    for i, (open_class, seed) in enumerate((("surprise", 3), ("fear", 3))):
        _write_record(
            root, open_class, seed, dict(zip(COMBOS, TUNING[i])), dict(zip(COMBOS, REPORTED[i])),
            dict(zip(COMBOS, matched[i])),
        )  # fmt: skip
    quiet = {"expect": 2, "say": lambda *_: None}
    assert tool.report(root, tmp_path / "t1", **quiet) == (1.0, "penultimate")  # the plain tuning rows
    assert tool.report(root, tmp_path / "t2", choose_on="tuning_matched", **quiet) == (0.0, "pyramid")
    steps = pd.read_csv(tmp_path / "t2" / "choices.csv")
    assert steps.loc[0, "tuning_auroc_mean"] == pytest.approx((0.70 + 0.60) / 2)  # draws and runs averaged
    with pytest.raises(ValueError, match="no honest 'tuning_matched' rows"):
        plain = _records(tmp_path / "plain", TUNING, REPORTED)
        tool.report(plain, tmp_path / "t3", choose_on="tuning_matched", **quiet)


def test_the_matched_share_is_estimated_without_the_reported_labels(tmp_path):
    """The share the tuning rows are matched to is ``pseudo_oe``'s own estimate on the reported
    rows against the held-out close rows: the reported set's labels and counts (pseudo-label
    table, metrics) can say anything, the share stays the same."""
    from test_tool_sensitivity import _with_tuning_rows
    from test_visualise import make_run

    from ferlib import stages
    from ferlib.openset import make_detector

    run = _with_tuning_rows(make_run(tmp_path / "run"))
    fixed = {"top_fraction": 0.1, "rounds": 2, "first_params": {"k": 10}}
    share = _tool().estimated_open_share(run, fixed)
    data = stages.load_openset_data(str(run), "honest", seed=0)
    det = make_detector("pseudo_oe", **fixed, share_multiplier=1.0, seed=0)
    det.score(data.detector_view())
    assert share == pytest.approx(det.shares_[-1]) and 0.0 < share < 1.0
    assert abs(share - data.is_open.mean()) < 0.2  # an estimate of the share, not any number
    table = run / "02_pseudo_labels" / "pseudo_labels.csv"
    frame = pd.read_csv(table)
    frame.assign(is_open=False, label=0, target=0).to_csv(table, index=False)  # every reported label erased
    pd.DataFrame([["msp", "honest", 0.6, 0.9, 0.8, 0.3, 1, 99, 0.8, "all"]], columns=METRIC_COLUMNS).to_csv(
        run / "metrics.csv", index=False
    )
    assert _tool().estimated_open_share(run, fixed) == share


def test_the_features_incumbent_is_the_one_kept_within_the_margin(tmp_path):
    """TUNING's pyramid and penultimate are within .01 of each other at share 1.0: whichever is
    the incumbent stays; step 1 compares the shares at the incumbent's features."""
    tool = _tool()
    root = _records(tmp_path / "records", TUNING, REPORTED)
    quiet = {"expect": 2, "say": lambda *_: None}
    assert tool.report(root, tmp_path / "t1", **quiet) == (1.0, "penultimate")
    assert tool.report(root, tmp_path / "t2", features_incumbent="pyramid", **quiet) == (1.0, "pyramid")
    steps = pd.read_csv(tmp_path / "t2" / "choices.csv")
    assert steps.loc[steps["step"] == 1, "features"].eq("pyramid").all()
    assert steps.loc[steps["step"] == 2, "candidate"].tolist() == ["'pyramid'", "'penultimate'"]


def test_explore_scores_only_matched_tuning_rows(tmp_path):
    """``explore`` (the candidates of a next rule) scores the tuning rows at the reported open
    share and never the reported rows: its table equals sensitivity's sweep on those rows."""
    from test_tool_sensitivity import _tool as sensitivity
    from test_tool_sensitivity import _with_tuning_rows
    from test_visualise import make_run

    run = _with_tuning_rows(make_run(tmp_path / "run"))
    pd.DataFrame([["msp", "honest", 0.6, 0.9, 0.8, 0.3, 60, 40, 0.8, "all"]], columns=METRIC_COLUMNS).to_csv(
        run / "metrics.csv", index=False
    )
    fixed = {"top_fraction": 0.1, "rounds": 1}
    table = _tool().explore([str(run)], "top_fraction", [0.1, 0.3], params=fixed, draws=2, say=lambda *a, **k: None)
    assert set(table["eval_subset"]) == {"tuning_matched"} and list(table["draw"]) == [0, 0, 1, 1]
    share = _tool().estimated_open_share(run, fixed)  # not metrics.csv's 40%: no reported label is read
    assert (table["matched_share"] == share).all() and share != pytest.approx(0.4)
    assert (table["n_open"] / table["n"] - share).abs().max() < 1 / table["n"].min()
    direct = sensitivity().sweep(str(run), "pseudo_oe", "top_fraction", [0.1, 0.3], ["honest"], fixed,
                                 eval_subset="tuning", open_share=share, draws=2)  # fmt: skip
    np.testing.assert_array_equal(table["auroc"].to_numpy(), direct["auroc"].to_numpy())
    assert (table["params"] == repr(fixed)).all() and (table["run"] == "run").all()


def _write_variant_record(root: Path, open_class: str, seed: int, reported: dict[str, float]) -> Path:
    """A record of a rule that chooses nothing: ``reported[variant]`` honest reported AUROC
    (reference: 1 - that); matched tuning rows .1 below it, two draws."""
    folder = root / f"ferplus_open-{open_class}_seed{seed}"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(
        json.dumps({"params": {"dataset": "ferplus", "open_class": open_class, "seed": seed}})
    )
    metrics = [["msp", p, 0.61, 0.9, 0.8, 0.3, 100, 50, 0.8, "all"] for p in ("honest", "reference")]
    metrics += [["pseudo_oe", "honest", reported["new"], 0.5, 0.9, 0.4, 100, 50, 0.8, "all"],
                ["pseudo_oe", "reference", 1 - reported["new"], 0.5, 0.9, 0.4, 100, 50, 0.8, "all"]]  # fmt: skip
    pd.DataFrame(metrics, columns=METRIC_COLUMNS).to_csv(folder / "metrics.csv", index=False)
    rows = []
    for variant, auroc in reported.items():
        for protocol, value in (("honest", auroc), ("reference", 1 - auroc)):
            rows.append([variant, protocol, "all", 0, value, 100, 50])
        for draw in (0, 1):
            rows.append([variant, "honest", "tuning_matched", draw, auroc - 0.1 + (0.01 if draw else -0.01), 40, 20])
    settings = pd.DataFrame(rows, columns=["variant", "protocol", "eval_subset", "draw", "auroc", "n_close", "n_open"])
    settings = settings.assign(detector="pseudo_oe", n=150, fpr95=0.5, aupr_in=0.9, aupr_out=0.4)
    settings["params"] = settings["variant"].map(lambda v: repr({"head_params": {"members": 3 if v == "new" else 1}}))
    settings.to_csv(folder / "pseudo_oe_settings.csv", index=False)
    return folder


def test_a_declared_variant_is_reported_and_every_variant_measured(tmp_path):
    """A rule that chooses nothing: the tables take the declared variant's reported rows (the
    same as stage 03's here), and variants.csv holds each variant's means per class and over
    the seeds (mean over classes per seed, then mean and std over seeds)."""
    tool = _tool()
    root = tmp_path / "records"
    values = {("surprise", 9): (0.9, 0.8), ("fear", 9): (0.7, 0.72), ("surprise", 10): (0.86, 0.8),
              ("fear", 10): (0.74, 0.7)}  # fmt: skip
    for (open_class, seed), (new, old) in values.items():
        _write_variant_record(root, open_class, seed, {"new": new, "old": old})
    said: list[str] = []
    table = tool.report_variants(root, tmp_path / "tables", "new", expect=4, say=said.append)
    printed = next(line for line in said if line.lstrip().startswith("variant"))  # the means over seeds
    assert " all " not in printed and " tuning_matched " in printed  # the reported means only with the flag
    said.clear()
    tool.report_variants(root, tmp_path / "shown", "new", expect=4, say=said.append, show_reported=True)
    assert " all " in next(line for line in said if line.lstrip().startswith("variant"))
    after = pd.read_csv(tmp_path / "tables" / "runs" / "ferplus_open-fear_seed10" / "metrics.csv")
    assert after.set_index(["detector", "protocol"]).loc[("pseudo_oe", "honest"), "auroc"] == pytest.approx(0.74)
    means = table[(table["open_class"] == "mean") & (table["eval_subset"] == "all") & (table["protocol"] == "honest")]
    means = means.set_index("variant")
    per_seed_new = [(0.9 + 0.7) / 2, (0.86 + 0.74) / 2]
    assert means.loc["new", "auroc_mean"] == pytest.approx(np.mean(per_seed_new))
    assert means.loc["new", "auroc_std_over_seeds"] == pytest.approx(np.std(per_seed_new, ddof=1))
    assert means.loc["old", "auroc_mean"] == pytest.approx((0.8 + 0.72 + 0.8 + 0.7) / 4)
    sur = table[(table["open_class"] == "Sur") & (table["eval_subset"] == "tuning_matched")].set_index("variant")
    assert sur.loc["old", "auroc_mean"] == pytest.approx(0.8 - 0.1)  # draws averaged
    # the other variant declared: its rows are the reported ones, and stage 03 differs from it
    tool.report_variants(root, tmp_path / "t2", "old", expect=4, say=lambda *_: None)
    after = pd.read_csv(tmp_path / "t2" / "runs" / "ferplus_open-fear_seed10" / "metrics.csv")
    assert after.set_index(["detector", "protocol"]).loc[("pseudo_oe", "honest"), "auroc"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no variant 'newer'"):
        tool.report_variants(root, tmp_path / "t3", "newer", expect=4, say=lambda *_: None)
    with pytest.raises(ValueError, match="4 complete record"):
        tool.report_variants(root, tmp_path / "t3", "new", expect=21, say=lambda *_: None)
    settings = root / "ferplus_open-fear_seed9" / "pseudo_oe_settings.csv"
    frame = pd.read_csv(settings)
    frame[frame["variant"] == "new"].to_csv(settings, index=False)
    with pytest.raises(ValueError, match="variant 'old' is missing"):
        tool.report_variants(root, tmp_path / "t3", "new", expect=4, say=lambda *_: None)


def test_a_variant_is_chosen_on_the_matched_tuning_rows_alone(tmp_path):
    """``incumbent``: the variant stage 03 ran, kept unless another beats it on the matched
    tuning rows by more than the margin; the reported rows then come from the chosen one."""
    tool = _tool()
    root = tmp_path / "records"
    # matched tuning rows sit .1 under the reported ones: new .70, old .555 (gain .145)
    for (open_class, seed), (new, old) in {("surprise", 9): (0.9, 0.8), ("fear", 10): (0.7, 0.51)}.items():
        _write_variant_record(root, open_class, seed, {"new": new, "old": old})
    quiet = {"expect": 2, "say": lambda *_: None}
    tool.report_variants(root, tmp_path / "t1", incumbent="old", min_gain=0.01, **quiet)
    steps = pd.read_csv(tmp_path / "t1" / "choices.csv").set_index("variant")
    assert steps.loc["new", "chosen"] and steps.loc["old", "tuning_auroc_mean"] == pytest.approx((0.8 + 0.51) / 2 - 0.1)
    after = pd.read_csv(tmp_path / "t1" / "runs" / "ferplus_open-fear_seed10" / "metrics.csv")
    assert after.set_index(["detector", "protocol"]).loc[("pseudo_oe", "honest"), "auroc"] == pytest.approx(0.7)
    tool.report_variants(root, tmp_path / "t2", incumbent="old", min_gain=0.15, **quiet)  # within the margin
    assert pd.read_csv(tmp_path / "t2" / "choices.csv").set_index("variant").loc["old", "chosen"]
    after = pd.read_csv(tmp_path / "t2" / "runs" / "ferplus_open-fear_seed10" / "metrics.csv")
    assert after.set_index(["detector", "protocol"]).loc[("pseudo_oe", "honest"), "auroc"] == pytest.approx(0.51)
    with pytest.raises(ValueError, match="either declared"):
        tool.report_variants(root, tmp_path / "t3", declared="new", incumbent="old", **quiet)


def test_record_variants_scores_each_variant_as_sensitivity_does(tmp_path):
    from test_tool_sensitivity import _tool as sensitivity
    from test_tool_sensitivity import _with_tuning_rows
    from test_visualise import make_run

    run = _with_tuning_rows(make_run(tmp_path / "run"))
    pd.DataFrame([["msp", "honest", 0.6, 0.9, 0.8, 0.3, 60, 40, 0.8, "all"]], columns=METRIC_COLUMNS).to_csv(
        run / "metrics.csv", index=False
    )
    (run / "manifest.json").write_text(json.dumps({"params": {"open_class": "surprise", "seed": 0}}))
    (run / "03_detect").mkdir(exist_ok=True)
    (run / "03_detect" / "scores_honest_tuning.csv").touch()  # what marks stage 03 run on the tuning rows
    variants = {"one": {"top_fraction": 0.1, "rounds": 1}, "wide": {"top_fraction": 0.3, "rounds": 1}}
    cheap = {"top_fraction": 0.1, "rounds": 2, "first_params": {"k": 10}}  # the share estimate's settings
    dest = _tool().record_variants(run, tmp_path / "records", variants, matched_draws=2, estimate_params=cheap)
    rows = pd.read_csv(dest / "pseudo_oe_settings.csv")
    assert set(rows["eval_subset"]) == {"tuning", "all", "tuning_matched"}
    matched = rows[rows["eval_subset"] == "tuning_matched"]
    assert matched["matched_share"].nunique() == 1  # one estimate per run, for every variant
    assert matched["matched_share"].iloc[0] == pytest.approx(_tool().estimated_open_share(run, cheap))
    assert (dest / "metrics.csv").is_file() and (dest / "manifest.json").is_file()
    for name, params in variants.items():
        mine = rows[(rows["variant"] == name) & (rows["eval_subset"] == "all")].set_index("protocol")
        direct = sensitivity().sweep(str(run), "pseudo_oe", "top_fraction", [params["top_fraction"]],
                                     ["honest", "reference"], params).set_index("protocol")  # fmt: skip
        np.testing.assert_allclose(mine.loc[direct.index, "auroc"], direct["auroc"])
        assert (rows.loc[rows["variant"] == name, "params"] == repr(params)).all()
    assert _tool().resolve_variants({"kit": "ferplus"})["kit"]["share_multiplier"] == 1.0
    with pytest.raises(ValueError, match="no detector preset 'rafdb'"):
        _tool().resolve_variants({"kit": "rafdb"})
