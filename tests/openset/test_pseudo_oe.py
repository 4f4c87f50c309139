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


@pytest.mark.parametrize(
    "params,words",
    [
        ({"head": "forest"}, "unknown binary head 'forest'.*logistic.*mlp"),
        ({"head": "mlp", "head_params": {"depth": 3}}, "bad head_params"),
        ({"head": "mlp", "head_params": {"epochs": 0}}, "epochs must be at least 1"),
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
