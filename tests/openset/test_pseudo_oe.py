"""ferlib/openset/pseudo_oe.py and binary_head.py: outlier exposure on pseudo-outliers."""

from __future__ import annotations

import numpy as np
import pytest

from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector, run_detectors
from ferlib.openset.binary_head import cross_fitted_binary_scores
from ferlib.openset.pseudo_oe import _top, candidate_purity


def test_separates_open_rows_and_keeps_each_rounds_candidates(make_features_data):
    data = make_features_data(n_close=300, n_open=100, seed=4)
    scores = run_detectors(data, ["pseudo_oe"], {"pseudo_oe": {"rounds": 3}}, {"seed": 0}, log=False)
    auroc = openset_metrics(scores["pseudo_oe"].scores, data.is_open)["auroc"]
    assert auroc > 0.95
    det = make_detector("pseudo_oe", rounds=3, top_fraction=0.2)
    det.score(data.detector_view())
    assert len(det.candidates_) == 3
    assert all(c.sum() == round(0.2 * len(data)) for c in det.candidates_)
    purity = candidate_purity(det.candidates_, data.is_open)
    assert all(p > 0.9 for p in purity)  # open rows are far away here: candidates must be open


def test_a_first_detector_that_ranks_backwards_misleads_it(make_features_data):
    """The candidates come from the first detector: a reversed ranking (flipped msp, via a
    confident-is-open stand-in) picks close rows, and the head learns little that helps."""
    data = make_features_data(n_close=300, n_open=100, seed=5)
    view = data.detector_view()
    good = make_detector("pseudo_oe", first="msp").score(view)
    assert openset_metrics(good, data.is_open)["auroc"] > 0.9
    msp = make_detector("msp").fit_score(view)
    wrong = cross_fitted_binary_scores(view.features, view.train_features, _top(-msp, 0.1))
    assert openset_metrics(wrong, data.is_open)["auroc"] < 0.7  # measured .57


def test_top_and_binary_head_contracts():
    s = np.array([0.1, 0.9, 0.5, 0.7, 0.3])
    assert list(np.flatnonzero(_top(s, 0.4))) == [1, 3]
    rng = np.random.default_rng(0)
    f, close = rng.normal(size=(20, 3)), rng.normal(size=(30, 3))
    with pytest.raises(ValueError, match="at least 2 candidates"):
        cross_fitted_binary_scores(f, close, np.eye(20, dtype=bool)[0])
    with pytest.raises(ValueError, match="folds must be at least 2"):
        cross_fitted_binary_scores(f, close, np.ones(20, bool), folds=1)


@pytest.mark.parametrize(
    "params,words",
    [({"first": "cycle"}, "saved outputs"), ({"top_fraction": 1.0}, "top_fraction"), ({"rounds": 0}, "rounds")],
)
def test_bad_parameters_are_refused(params, words):
    with pytest.raises(ValueError, match=words):
        make_detector("pseudo_oe", **params)


def test_the_mlp_head_separates_what_a_linear_head_cannot():
    """Close rows in a ball, candidates on a shell around it: no hyperplane separates them
    (the logistic head stays near chance), one hidden layer does."""
    rng = np.random.default_rng(0)
    close = rng.normal(size=(600, 4))
    direction = rng.normal(size=(300, 4))
    shell = direction / np.linalg.norm(direction, axis=1, keepdims=True) * 4.0
    evals = np.concatenate([rng.normal(size=(200, 4)), shell])
    is_open = np.r_[np.zeros(200, bool), np.ones(300, bool)]
    lin = cross_fitted_binary_scores(evals, close, is_open, head="logistic")
    mlp = cross_fitted_binary_scores(evals, close, is_open, head="mlp", head_params={"epochs": 30})
    assert openset_metrics(lin, is_open)["auroc"] < 0.7
    assert openset_metrics(mlp, is_open)["auroc"] > 0.95


def test_the_mlp_head_is_seeded_and_pseudo_oe_takes_it(make_features_data):
    from ferlib.openset.mlp_head import MLPBinaryHead

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(200, 5)), np.r_[np.zeros(150), np.ones(50)]
    p = [MLPBinaryHead(seed=s, epochs=2).fit(x, y).predict_proba(x) for s in (0, 0, 1)]
    assert p[0].shape == (200, 2) and np.allclose(p[0].sum(1), 1.0)
    assert np.array_equal(p[0], p[1]) and not np.allclose(p[0], p[2])
    data = make_features_data(n_close=300, n_open=100, seed=4)
    scores = run_detectors(data, ["pseudo_oe"], {"pseudo_oe": {"head": "mlp"}}, {"seed": 0}, log=False)
    assert openset_metrics(scores["pseudo_oe"].scores, data.is_open)["auroc"] > 0.95
    with pytest.raises(ValueError, match="both classes"):
        MLPBinaryHead().fit(x, np.zeros(200))


def test_mlp_members_average_heads_started_apart():
    """``members`` k: the mean of k one-net heads, each from its own seed (member 0 from the
    head's seed, so ``members=1`` is the one-net head to the last digit)."""
    from ferlib.openset.mlp_head import _MEMBER_SEED_STRIDE, MLPBinaryHead

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 6)), (rng.random(300) < 0.3).astype(float)
    one = MLPBinaryHead(seed=5, epochs=2).fit(x, y).predict_proba(x)
    assert np.array_equal(MLPBinaryHead(seed=5, epochs=2, members=1).fit(x, y).predict_proba(x), one)
    singles = [
        MLPBinaryHead(seed=5 + _MEMBER_SEED_STRIDE * m, epochs=2).fit(x, y).predict_proba(x)[:, 1] for m in range(3)
    ]
    three = MLPBinaryHead(seed=5, epochs=2, members=3).fit(x, y).predict_proba(x)
    assert np.allclose(three[:, 1], np.mean(singles, axis=0)) and np.allclose(three.sum(1), 1.0)
    assert not np.allclose(singles[0], singles[1])  # the members do differ


@pytest.mark.parametrize(
    "params,words",
    [
        ({"head": "forest"}, "unknown binary head 'forest'.*logistic.*mlp"),
        ({"head": "mlp", "head_params": {"depth": 3}}, "bad head_params"),
        ({"head": "mlp", "head_params": {"epochs": 0}}, "epochs must be at least 1"),
        ({"head": "mlp", "head_params": {"members": 0}}, "members must be at least 1"),
    ],
)
def test_bad_binary_heads_are_refused(params, words):
    with pytest.raises(ValueError, match=words):
        make_detector("pseudo_oe", **params)


def test_the_mlp_head_takes_at_least_min_steps_updates(monkeypatch):
    """Few rows: epochs are added until min_steps updates are made; many rows: epochs rule."""
    import torch

    from ferlib.openset.mlp_head import MLPBinaryHead

    steps = []
    real = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real(self, *a, **k))
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(1000, 3)), np.r_[np.zeros(900), np.ones(100)]
    MLPBinaryHead(epochs=2, batch_size=100, min_steps=55).fit(x, y)
    assert len(steps) == 60  # 10 updates an epoch: 6 epochs reach 55
    steps.clear()
    MLPBinaryHead(epochs=2, batch_size=100, min_steps=5).fit(x, y)
    assert len(steps) == 20


# ----------------------------------------------------------------------------- feature spaces
def _signal_only_in_the_pyramid(make_features_data, seed: int = 6):
    """The penultimate features are noise (open and close alike); the informative features
    sit in ``extras["pyramid"]`` / ``train_extras["pyramid"]``, as stage 02 saves them."""
    from dataclasses import replace

    data = make_features_data(n_close=300, n_open=100, seed=seed)
    rng = np.random.default_rng(seed)
    return replace(
        data,
        features=rng.normal(0, 1, data.features.shape),
        train_features=rng.normal(0, 1, data.train_features.shape),
        extras={**data.extras, "pyramid": data.features},
        train_extras={"pyramid": data.train_features},
    )


def test_features_pyramid_reads_the_pyramid_for_the_first_detector_and_the_heads(make_features_data):
    data = _signal_only_in_the_pyramid(make_features_data)
    got = run_detectors(
        data, ["pseudo_oe"], {"pseudo_oe": {"features": "pyramid", "rounds": 2}}, {"seed": 0}, log=False
    )["pseudo_oe"].scores
    assert openset_metrics(got, data.is_open)["auroc"] > 0.95
    det = make_detector("pseudo_oe", first="tknn", rounds=2)  # the penultimate noise: nothing to find
    assert openset_metrics(det.score(data.detector_view()), data.is_open)["auroc"] < 0.7


def test_feature_space_views_and_their_errors(make_features_data):
    from dataclasses import replace

    from ferlib.openset.data import OpenSetData

    data = _signal_only_in_the_pyramid(make_features_data)
    assert data.in_feature_space("penultimate") is data
    view = data.in_feature_space("pyramid")
    assert view.features is data.extras["pyramid"] and view.train_features is data.train_extras["pyramid"]
    np.testing.assert_array_equal(view.logits, data.logits)
    with pytest.raises(ValueError, match="unknown feature space 'spatial'"):
        data.in_feature_space("spatial")
    bare = replace(data, train_extras={})
    with pytest.raises(ValueError, match=r"no pyramid features for the training rows; re-run stage 02 .*pyramid=True"):
        bare.in_feature_space("pyramid")
    with pytest.raises(ValueError, match=r"train_extras\['pyramid'\] has 3 rows, train_features 500"):
        OpenSetData(**{**data.__dict__, "train_extras": {"pyramid": np.zeros((3, 16))}})
    with pytest.raises(ValueError, match="features must be one of"):
        make_detector("pseudo_oe", features="spatial")


def test_the_result_key_follows_the_feature_space(make_features_data):
    from dataclasses import replace

    from ferlib.openset import detector_class
    from ferlib.openset.keys import result_ingredients, result_key

    data = _signal_only_in_the_pyramid(make_features_data).detector_view()
    cls = detector_class("pseudo_oe")
    key = lambda d, space: result_key(result_ingredients(cls, {"features": space}, d, "honest", "all"))  # noqa: E731
    other = replace(data, extras={**data.extras, "pyramid": data.extras["pyramid"] + 1.0})
    assert key(data, "pyramid") != key(other, "pyramid")  # new pyramid features: not reused
    assert key(data, "penultimate") == key(other, "penultimate")  # they are not read there
    assert key(data, "pyramid") != key(data, "penultimate")


def _mixture_with_reference(share: float, seed: int = 0, n: int = 1500):
    """Close training rows, a held-out close reference from the same distribution, and an
    evaluation set with ``share`` open rows (shifted, overlapping the close ones a little)."""
    import pandas as pd

    from ferlib.openset.data import TABLE_COLUMNS, OpenSetData

    rng = np.random.default_rng(seed)
    d, k = 8, 3
    means = rng.normal(0, 3, (k, d))

    def close(m):
        y = rng.integers(0, k, m)
        return means[y] + rng.normal(0, 1, (m, d)), y

    n_open = int(round(share * n))
    close_eval, y_eval = close(n - n_open)
    open_eval = rng.normal(0, 1, (n_open, d)) + np.r_[2.5, 2.5, np.zeros(d - 2)]
    train, y_train = close(2000)
    reference, _ = close(800)
    feats = np.concatenate([close_eval, open_eval])
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"{i}.png" for i in range(n)],
            "label": np.r_[y_eval, np.full(n_open, 9)],
            "target": np.r_[y_eval, -np.ones(n_open, int)],
            "pseudo": np.zeros(n, int),
            "is_open": np.r_[np.zeros(n - n_open, bool), np.ones(n_open, bool)],
            "origin": "test",
            "source_index": np.arange(n),
        }
    )[TABLE_COLUMNS]
    logits = np.zeros((n, k))
    return OpenSetData(table, logits, feats, train, y_train, reference_features=reference)


@pytest.mark.parametrize("share", [0.1, 0.6])
def test_share_multiplier_sizes_the_candidates_by_the_estimated_open_share(share):
    data = _mixture_with_reference(share)
    det = make_detector("pseudo_oe", rounds=3, top_fraction=0.2, share_multiplier=1.0)
    scores = det.score(data.detector_view())
    assert len(det.shares_) == 2
    assert all(abs(s - share) < 0.1 for s in det.shares_), det.shares_
    assert det.candidates_[0].sum() == round(0.2 * len(data))  # round 0 keeps top_fraction
    assert det.candidates_[-1].sum() == round(det.shares_[-1] * len(data))
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.9


def test_share_multiplier_needs_a_reference_and_keys_follow_it():
    from dataclasses import replace

    from ferlib.openset.keys import result_ingredients, result_key
    from ferlib.openset.pseudo_oe import PseudoOutlierExposure

    data = _mixture_with_reference(0.3)
    with pytest.raises(ValueError, match="reference_features"):
        make_detector("pseudo_oe", share_multiplier=1.0, rounds=2).score(replace(data, reference_features=None))
    with pytest.raises(ValueError, match="rounds >= 2"):
        make_detector("pseudo_oe", share_multiplier=1.0, rounds=1)
    params = {"share_multiplier": 1.0, "rounds": 2}
    key = result_key(result_ingredients(PseudoOutlierExposure, params, data, "honest", "all"))
    moved = replace(data, reference_features=data.reference_features + 1.0)
    assert key != result_key(result_ingredients(PseudoOutlierExposure, params, moved, "honest", "all"))


def test_stage_data_carries_the_validation_close_rows_as_the_reference(tmp_path):
    """Reported sets: the reference is every close row of the tuning outputs (none of them an
    evaluation row); the tuning set: a seeded half of its own close rows; no tuning outputs:
    no reference."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_tool_sensitivity import _with_tuning_rows
    from test_visualise import make_run

    from ferlib import stages

    plain = make_run(tmp_path / "plain")
    assert stages.load_openset_data(str(plain), "honest").reference_features is None
    run = _with_tuning_rows(make_run(tmp_path / "run"), seed=0)
    with np.load(run / "02_pseudo_labels" / stages.TUNING_DIR / "outputs.npz") as t:
        close = t["eval_features"][~t["is_open"].astype(bool)]
    for protocol in ("honest", "reference"):
        data = stages.load_openset_data(str(run), protocol)
        np.testing.assert_array_equal(data.reference_features, close)
        assert not (data.features[:, None, :] == close[None, :, :]).all(-1).any()  # no evaluation row
    tuning = stages.load_openset_data(str(run), "honest", eval_subset="tuning")
    ref = tuning.reference_features
    assert len(ref) == round(stages.TUNING_REFERENCE_SHARE * len(close))
    assert (ref[:, None, :] == close[None, :, :]).all(-1).any(1).all()  # each one a close tuning row
    np.testing.assert_array_equal(
        ref, stages.load_openset_data(str(run), "honest", eval_subset="tuning").reference_features
    )


def test_a_share_estimate_near_zero_keeps_min_fraction_candidates():
    data = _mixture_with_reference(0.0)
    det = make_detector("pseudo_oe", rounds=2, top_fraction=0.2, share_multiplier=1.0, min_fraction=0.03)
    det.score(data.detector_view())
    assert det.shares_[0] < 0.03
    assert det.candidates_[1].sum() == round(0.03 * len(data))
    with pytest.raises(ValueError, match="min_fraction"):
        make_detector("pseudo_oe", top_fraction=0.2, min_fraction=0.3)
