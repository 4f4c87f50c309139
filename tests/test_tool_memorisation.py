"""tools/memorisation.py: AUROC against close-set training epochs under both protocols."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scripts import load_script

from ferlib.data.synthetic import SyntheticConfig, write_synthetic
from ferlib.metrics import openset_metrics
from ferlib.openset.data import reference_donors

DETECTORS = ["max_logit", "msp", "knn"]


def _tool():
    return load_script("tools/memorisation.py")


def test_reference_donors_is_the_protocols_permutation():
    source = np.array([5, 0, 9, 3])
    expected = np.random.default_rng(7).permutation(12)[source]
    assert np.array_equal(reference_donors(source, 12, seed=7), expected)


def test_select_rows_is_stratified_and_keeps_the_donors():
    tool = _tool()
    rows = np.arange(100, 400)
    targets = np.repeat([0, 1, 2], 100)
    keep = np.array([100, 101, 399])
    picked, y = tool.select_rows(rows, targets, 60, seed=0, keep=keep)
    assert set(keep) <= set(picked) and abs(len(picked) - 60) <= 3
    assert np.array_equal(y, targets[picked - 100])
    assert all(abs((y == k).sum() - 20) <= 3 for k in range(3))
    assert tool.select_rows(rows, targets, None, seed=0)[0] is rows


@pytest.mark.slow
def test_memorisation_study_end_to_end(tmp_path, capsys):
    tool = _tool()
    root = write_synthetic(
        tmp_path / "synthetic", SyntheticConfig(n_train=700, n_valid=70, n_test=140, seed=0, class_shares=None)
    )
    out = tmp_path / "study"
    args = [
        "--data-root",
        str(root),
        "--input-size",
        "32",
        "--train-rows",
        "200",
        "--batch-size",
        "16",
        "--detectors",
        *DETECTORS,
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert tool.main([*args, "--epochs", "1", "2"]) == 0
    table = pd.read_csv(out / "memorisation.csv")
    assert len(table) == 2 * 2 * len(DETECTORS)
    assert set(zip(table["epoch"], table["protocol"], table["detector"])) == {
        (e, p, d) for e in (1, 2) for p in ("honest", "reference") for d in DETECTORS
    }
    acc = table.drop_duplicates("epoch").set_index("epoch")["train_acc"]
    assert acc[2] > acc[1]
    assert (table["n_trained"] < 700).all() and table["donors_trained"].between(0, 1).all()

    # the reference protocol hands the open training rows their donors' outputs: recompute
    # them from stage 02's files and the permutation, and compare values
    run = out / "epochs" / "epoch_0002"
    z = np.load(run / "02_pseudo_labels" / "outputs.npz")
    rows = pd.read_csv(run / "02_pseudo_labels" / "pseudo_labels.csv")
    is_open = rows["is_open"].to_numpy()
    from_train = rows["origin"].to_numpy() == "train"
    assert from_train.any() and is_open[from_train].all()
    donors = np.random.default_rng(0).permutation(len(z["all_train_logits"]))[rows["source_index"][from_train]]
    logits = z["eval_logits"].copy()
    logits[from_train] = z["all_train_logits"][donors]
    at2 = table[(table["epoch"] == 2) & (table["detector"] == "max_logit")].set_index("protocol")
    donor_mean = z["all_train_logits"][donors].max(1).mean()
    own_mean = z["eval_logits"][from_train].max(1).mean()
    assert at2.loc["reference", "mean_max_logit_open_train"] == pytest.approx(donor_mean, rel=1e-6)
    assert at2.loc["honest", "mean_max_logit_open_train"] == pytest.approx(own_mean, rel=1e-6)
    assert donor_mean != pytest.approx(own_mean, rel=1e-3)
    assert at2.loc["reference", "auroc"] == pytest.approx(openset_metrics(-logits.max(1), is_open)["auroc"])
    assert at2.loc["honest", "auroc"] == pytest.approx(openset_metrics(-z["eval_logits"].max(1), is_open)["auroc"])
    # the key the tool keeps is the loop's own
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "close_set" / "key.json").read_text())["key"] == manifest["training"]["key"]
    assert manifest["data"]["fingerprint"] and manifest["environment"]["torch"]
    for suffix in ("png", "pdf"):
        assert (out / f"memorisation_auroc.{suffix}").stat().st_size > 0
    assert "AUROC (FPR@95)" in capsys.readouterr().out

    # one more epoch count: only epoch 3 is trained, epochs 1 and 2 are not scored again
    scored = {e: (out / "epochs" / f"epoch_{e:04d}" / "memorisation.json").stat().st_mtime_ns for e in (1, 2)}
    assert tool.main([*args, "--epochs", "1", "2", "3"]) == 0
    log = json.loads((out / "training_log.json").read_text())
    assert [entry["trained_epochs"] for entry in log] == [[1], [2], [3]]
    assert len(pd.read_csv(out / "close_set" / "history.csv")) == 3
    for e, mtime in scored.items():
        assert (out / "epochs" / f"epoch_{e:04d}" / "memorisation.json").stat().st_mtime_ns == mtime
    assert sorted(pd.read_csv(out / "memorisation.csv")["epoch"].unique()) == [1, 2, 3]

    # an epoch count below the checkpoint whose weights were not kept is refused, not mislabelled
    import shutil

    shutil.rmtree(out / "epochs" / "epoch_0002")
    assert tool.main([*args, "--epochs", "2"]) == 2
    assert "past 2" in capsys.readouterr().err


def test_detectors_the_study_cannot_serve_are_refused():
    tool = _tool()
    with pytest.raises(ValueError, match="unknown detector"):
        tool.check_detectors(["nope"], None, subsampled=False)
    with pytest.raises(ValueError, match="extras"):
        tool.check_detectors(["uncertainty"], None, subsampled=False)
    with pytest.raises(ValueError, match="--train-rows"):
        tool.check_detectors(["proser"], None, subsampled=True)
