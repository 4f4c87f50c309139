"""ferlib/openset/sal.py: SAL's gradient filter and its cross-fitted binary head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector, run_detectors
from ferlib.openset.sal import _class_row_gradients, gradient_filter_scores


def test_class_row_gradient_is_autograd_of_the_last_layer():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(5, 7))
    layer = torch.nn.Linear(7, 4).double()
    logits = layer(torch.from_numpy(f)).detach().numpy()
    labels = logits.argmax(1)
    ours = _class_row_gradients(f, logits, labels)
    for i in range(5):
        layer.zero_grad()
        out = layer(torch.from_numpy(f[i : i + 1]))
        torch.nn.functional.cross_entropy(out, torch.tensor([labels[i]])).backward()
        np.testing.assert_allclose(ours[i], layer.weight.grad[labels[i]].numpy(), atol=1e-12)


def test_filter_threshold_passes_the_asked_share_of_close_training_rows(make_features_data):
    data = make_features_data(n_close=300, n_open=100, seed=1)
    det = make_detector("sal_filter", threshold_quantile=0.9)
    scores, threshold = det._filter(data.detector_view())
    from ferlib.openset.pood import recover_linear_head

    train_logits = recover_linear_head(data.features, data.logits).logits(data.train_features)
    _, ref = gradient_filter_scores(
        data.features, data.logits, data.pseudo, data.train_features, train_logits, data.train_targets
    )
    assert (ref > threshold).mean() == pytest.approx(0.1, abs=0.01)
    assert len(scores) == len(data)


@pytest.mark.parametrize("name", ["sal_filter", "sal"])
def test_sal_separates_open_rows_where_it_must(make_features_data, name):
    data = make_features_data(n_close=300, n_open=100, seed=2)
    scores = run_detectors(data, [name], {}, {"seed": 0}, log=False)[name].scores
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.95
    # a broken variant (scores not matched to their rows) cannot get there
    shuffled = np.random.default_rng(0).permutation(scores)
    assert openset_metrics(shuffled, data.is_open)["auroc"] < 0.7


def test_binary_head_is_cross_fitted(make_features_data, monkeypatch):
    """No evaluation row is scored by a classifier that saw it as a candidate."""
    import sklearn.linear_model

    data = make_features_data(n_close=200, n_open=80, seed=3)
    view = data.detector_view()
    seen: list[np.ndarray] = []
    real = sklearn.linear_model.LogisticRegression

    class Spy(real):
        def fit(self, x, y, *a, **k):
            seen.append(np.asarray(x)[np.asarray(y) == 1])
            return super().fit(x, y, *a, **k)

        def predict_proba(self, x):
            seen.append(("scored", np.asarray(x)))
            return super().predict_proba(x)

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", Spy)
    det = make_detector("sal", folds=4)
    det.score(view)
    assert det.candidates_.sum() >= 2
    fits = [s for s in seen if not isinstance(s, tuple)]
    scored = [s[1] for s in seen if isinstance(s, tuple)]
    assert len(fits) == len(scored) == 4  # one classifier per fold (ferlib/openset/binary_head.py)
    for trained, rows in zip(fits, scored):  # standardised, so compare rows as sets of tuples
        a = {tuple(np.round(r, 8)) for r in trained}
        b = {tuple(np.round(r, 8)) for r in rows}
        assert a.isdisjoint(b)
    assert sum(len(r) for r in scored) == len(data)


def test_bad_parameters_are_refused():
    for bad in ({"threshold_quantile": 1.0}, {"folds": 1}, {"C": 0}):
        with pytest.raises(ValueError):
            make_detector("sal", **bad)
