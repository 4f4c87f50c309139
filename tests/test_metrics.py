"""ferlib.metrics: open-set metrics against scikit-learn, hand-checked cases, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

from ferlib.metrics import (
    METRIC_COLUMNS,
    accuracy,
    close_accuracy,
    confusion,
    fpr_at_tpr,
    metrics_table,
    openset_metrics,
)

KEYS = {"auroc", "fpr95", "aupr_in", "aupr_out", "n_close", "n_open"}


# --------------------------------------------------------------------------------------------
# openset_metrics equals an independent scikit-learn computation


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_equal_to_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(200, 600))
    is_open = rng.random(n) < rng.uniform(0.2, 0.6)
    scores = rng.normal(size=n) + 0.7 * is_open  # mildly informative, higher = open
    close = (~is_open).astype(int)

    fpr, tpr, _ = roc_curve(close, -scores)
    assert not np.any(tpr == 0.95)  # no tie at the target: np.interp is well defined
    expected = {
        "auroc": roc_auc_score(close, -scores),
        "fpr95": np.interp(0.95, tpr, fpr),
        "aupr_in": average_precision_score(close, -scores),
        "aupr_out": average_precision_score(is_open.astype(int), scores),
        "n_close": int(close.sum()),
        "n_open": int(is_open.sum()),
    }
    got = openset_metrics(scores, is_open)
    assert set(got) == KEYS
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert isinstance(got["n_close"], int) and isinstance(got["auroc"], float)


def test_input_types_do_not_change_the_result():
    rng = np.random.default_rng(5)
    is_open = rng.random(300) < 0.4
    scores = rng.normal(size=300)
    ref = openset_metrics(scores, is_open)
    assert openset_metrics(list(scores), is_open.astype(int)) == ref
    assert openset_metrics(pd.Series(scores), pd.Series(is_open)) == ref
    assert openset_metrics(scores.astype(np.float32).astype(float), is_open.astype(float)) == ref
    assert openset_metrics(scores, np.where(is_open, "True", "False")) == ref


def test_aupr_in_and_out_are_not_the_same_thing():
    rng = np.random.default_rng(9)
    is_open = rng.random(400) < 0.2
    m = openset_metrics(rng.normal(size=400) + is_open, is_open)
    assert m["aupr_in"] > m["aupr_out"]  # 80% close: the close-positive AP is the larger


# --------------------------------------------------------------------------------------------
# extremes and hand-checkable cases


def test_perfect_separation():
    is_open = np.array([0] * 30 + [1] * 10, bool)
    scores = np.where(is_open, 5.0, 0.0) + np.arange(40) * 0.01
    m = openset_metrics(scores, is_open)
    assert m["auroc"] == 1.0
    assert m["fpr95"] == 0.0
    assert m["aupr_in"] == pytest.approx(1.0) and m["aupr_out"] == pytest.approx(1.0)
    assert (m["n_close"], m["n_open"]) == (30, 10)


def test_inverted_scores():
    is_open = np.array([0] * 30 + [1] * 10, bool)
    scores = np.where(is_open, -5.0, 0.0) + np.arange(40) * 0.01
    m = openset_metrics(scores, is_open)
    assert m["auroc"] == 0.0
    assert m["fpr95"] == 1.0


def test_constant_scores_are_chance():
    is_open = np.array([0] * 20 + [1] * 20, bool)
    m = openset_metrics(np.zeros(40), is_open)
    assert m["auroc"] == 0.5
    assert m["fpr95"] == pytest.approx(0.95)  # the diagonal


def test_fpr95_hand_example_with_interpolation():
    # 10 close samples with scores 0..8 and 9; 4 open samples with scores 9, 9, 10, 11.
    # Accepting scores < 9 accepts 9/10 close (TPR .9) and no open sample (FPR 0); accepting
    # scores <= 9 accepts all close (TPR 1) and 2/4 open (FPR .5). The close and open samples
    # tied at 9 make a straight segment from (0, .9) to (.5, 1): at TPR .95, FPR = .25.
    close_scores = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    open_scores = [9, 9, 10, 11]
    scores = np.array(close_scores + open_scores, float)
    is_open = np.array([False] * 10 + [True] * 4)
    m = openset_metrics(scores, is_open)
    assert m["fpr95"] == pytest.approx(0.25)
    # AUROC by pairs: 9 close x 4 open won, close 9 ties two opens (2 x .5), beats two: 39/40
    assert m["auroc"] == pytest.approx(39 / 40)
    assert fpr_at_tpr(scores, is_open, 0.9) == pytest.approx(0.0)
    assert fpr_at_tpr(scores, is_open, 1.0) == pytest.approx(0.5)


def test_fpr95_hand_example_vertical_step():
    # 10 close (0..9), open at 8.5 and 20: to accept 95% of the close samples the threshold must
    # pass 9 and so accept the open sample at 8.5: FPR = 1/2 exactly.
    scores = np.array(list(range(10)) + [8.5, 20.0])
    is_open = np.array([False] * 10 + [True] * 2)
    assert openset_metrics(scores, is_open)["fpr95"] == pytest.approx(0.5)


def test_fpr95_exact_level_takes_the_best_threshold():
    # 20 close (0..19), open at 18.5 and 30. Accepting scores <= 18 accepts exactly 19/20 = 95%
    # of the close samples and no open sample: FPR@95 = 0. (np.interp would return .5 here: on
    # a tie in TPR its answer is undefined.)
    scores = np.array(list(range(20)) + [18.5, 30.0])
    is_open = np.array([False] * 20 + [True] * 2)
    assert openset_metrics(scores, is_open)["fpr95"] == 0.0


# --------------------------------------------------------------------------------------------
# bad input


def test_length_mismatch():
    with pytest.raises(ValueError, match="differ in length: 5 scores, 4"):
        openset_metrics(np.zeros(5), np.array([0, 1, 0, 1]))


@pytest.mark.parametrize("flag", [0, 1])
def test_one_class_only(flag):
    with pytest.raises(ValueError, match="both classes"):
        openset_metrics(np.arange(6.0), np.full(6, flag))


def test_nan_scores_are_counted():
    scores = np.array([0.1, np.nan, 0.3, np.nan, 0.5, 0.2])
    with pytest.raises(ValueError, match="2 NaN"):
        openset_metrics(scores, [0, 1, 0, 1, 0, 1])


def test_infinite_scores():
    with pytest.raises(ValueError, match="1 infinite"):
        openset_metrics([0.1, np.inf, 0.3, 0.4], [0, 1, 0, 1])


def test_bad_is_open_values():
    with pytest.raises(ValueError, match="boolean or 0/1"):
        openset_metrics([0.1, 0.2, 0.3], [0, 1, 2])


def test_bad_tpr():
    with pytest.raises(ValueError, match="tpr"):
        openset_metrics([0.1, 0.2, 0.3], [0, 1, 0], tpr=0.0)


# --------------------------------------------------------------------------------------------
# accuracy and confusion


def test_accuracy_and_confusion_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 500)
    p = np.where(rng.random(500) < 0.7, y, rng.integers(0, 6, 500))
    assert accuracy(y, p) == pytest.approx(accuracy_score(y, p))
    cm = confusion(y, p, 7)  # a class that never occurs still gets its row and column
    assert cm.shape == (7, 7)
    np.testing.assert_array_equal(cm[:6, :6], confusion_matrix(y, p))
    assert cm[6].sum() == 0 and cm[:, 6].sum() == 0
    assert cm.sum() == 500


def test_confusion_rejects_out_of_range():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion([0, 1, 3], [0, 1, 2], 3)
    with pytest.raises(ValueError, match="differ in length"):
        accuracy([0, 1], [0])


def test_close_accuracy_maps_canonical_labels_in_enum_order():
    # close classes 0, 1, 3 (canonical) -> targets 0, 1, 2; open class 2
    labels = np.array([0, 1, 3, 3, 2, 2])
    pseudo = np.array([0, 1, 2, 0, 1, 0])
    is_open = labels == 2
    assert close_accuracy(labels, pseudo, is_open) == pytest.approx(3 / 4)
    assert close_accuracy(labels, pseudo, is_open, close_classes=[0, 1, 3]) == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# metrics_table


def _scores_frame(n=300, seed=0):
    rng = np.random.default_rng(seed)
    is_open = rng.random(n) < 0.35
    label = np.where(is_open, 2, rng.choice([0, 1, 3, 4, 5, 6], n))
    target = np.searchsorted([0, 1, 3, 4, 5, 6], label)
    pseudo = np.where(rng.random(n) < 0.8, target, rng.integers(0, 6, n))
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"img/{i}.png" for i in range(n)],
            "label": label,
            "pseudo": pseudo,
            "is_open": is_open,
            "origin": np.where(is_open, "train", "test"),
            "random": rng.normal(size=n),
            "separable": is_open * 4.0 + rng.normal(size=n),
        }
    )


def test_metrics_table(tmp_path):
    frame = _scores_frame()
    # the frame as another stage would hand it over: through a CSV file
    frame.to_csv(tmp_path / "scores.csv", index=False)
    frame = pd.read_csv(tmp_path / "scores.csv")
    table = metrics_table(frame, ["separable", "random"], "honest")
    assert list(table.columns) == list(METRIC_COLUMNS) + ["close_acc"]
    assert list(table["detector"]) == ["separable", "random"]
    assert set(table["protocol"]) == {"honest"}
    for _, row in table.iterrows():
        m = openset_metrics(frame[row["detector"]], frame["is_open"])
        for key in KEYS:
            assert row[key] == pytest.approx(m[key])
    assert table.loc[0, "auroc"] > 0.95
    close = ~frame["is_open"].to_numpy()
    target = np.searchsorted([0, 1, 3, 4, 5, 6], frame["label"].to_numpy())
    expected_acc = (frame["pseudo"].to_numpy() == target)[close].mean()
    assert table["close_acc"].iloc[0] == pytest.approx(expected_acc)


def test_metrics_table_errors():
    frame = _scores_frame(50)
    with pytest.raises(ValueError, match="not in the scores table"):
        metrics_table(frame, ["nope"], "honest")
    frame.loc[3, "random"] = np.nan
    with pytest.raises(ValueError, match="detector 'random'.*1 NaN"):
        metrics_table(frame, ["random"], "honest")
