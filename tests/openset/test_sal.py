"""ferlib/openset/sal.py: SAL's gradient filter and its cross-fitted binary head."""

from __future__ import annotations

import itertools
from dataclasses import replace

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


def _f32(row: np.ndarray) -> bytes:
    """A row's identity, as the heads see it (the MLP trains in float32)."""
    return np.asarray(row, np.float32).tobytes()


def test_pseudo_oe_heads_are_cross_fitted_in_every_round_member_and_reference_row(make_features_data, monkeypatch):
    """``pseudo_oe`` with averaged MLP heads, several rounds, negatives picked from the
    evaluation set and held-out close reference rows (its estimated open share): in every round
    each evaluation row and each reference row is scored exactly once, by a head none of whose
    members trained on it; no reference row trains any head; every member of a head trains on
    that head's rows and the head's score is their mean.

    The standardisation is replaced by the identity, so that every row a head trains on or
    scores can be traced back to the evaluation, training or reference row it is."""
    import sklearn.preprocessing
    import torch

    from ferlib.openset import mlp_head

    class Identity:
        def fit(self, x):
            return self

        def transform(self, x):
            return np.asarray(x, np.float64)

    log: list[tuple] = []
    fitted = itertools.count()

    class Spy(mlp_head.MLPBinaryHead):
        def fit(self, x, y):
            self.head_ = next(fitted)  # an id() could be reused once a head is freed
            log.append(("fit", self.head_, np.asarray(x), np.asarray(y)))
            return super().fit(x, y)

        def _fit_one(self, x_t, y_t, weight, seed):
            log.append(("member", self.head_, x_t.numpy().copy(), seed))
            return super()._fit_one(x_t, y_t, weight, seed)

        def predict_proba(self, x):
            out = super().predict_proba(x)
            with torch.no_grad():
                x_t = torch.as_tensor(np.asarray(x, np.float32))
                each = [torch.sigmoid(net(x_t).squeeze(1)).numpy() for net in self.nets_]
            np.testing.assert_allclose(out[:, 1], np.mean(each, axis=0), rtol=1e-5)  # the members' mean
            log.append(("score", self.head_, np.asarray(x), len(self.nets_)))
            return out

    monkeypatch.setattr(sklearn.preprocessing, "StandardScaler", Identity)
    monkeypatch.setattr(mlp_head, "MLPBinaryHead", Spy)
    data = make_features_data(n_close=150, n_open=60, seed=4)
    reference = data.features[:150] + np.random.default_rng(5).normal(0, 0.5, (150, data.features.shape[1]))
    view = replace(data, reference_features=reference).detector_view()
    rounds, folds, members = 3, 4, 3
    det = make_detector(
        "pseudo_oe",
        head="mlp",
        head_params={"members": members, "hidden": 8, "epochs": 1, "min_steps": 1},
        rounds=rounds,
        folds=folds,
        top_fraction=0.2,
        negative_fraction=0.2,
        share_multiplier=1.0,
    )
    det.score(view)
    assert len(det.shares_) == rounds - 1  # the reference rows were read, from round 1 on

    where = {_f32(r): ("eval", i) for i, r in enumerate(view.features)}
    where |= {_f32(r): ("train", i) for i, r in enumerate(view.train_features)}
    where |= {_f32(r): ("ref", i) for i, r in enumerate(reference)}
    assert len(where) == len(view) + len(view.train_features) + len(reference)  # every row traceable

    def rows(x: np.ndarray) -> list[tuple[str, int]]:
        return [where[_f32(r)] for r in x]

    heads = list(dict.fromkeys(entry[1] for entry in log if entry[0] == "fit"))
    assert len(heads) == rounds * folds  # one head per fold, in every round
    trained_negatives = 0
    for r in range(rounds):
        scored_eval: list[int] = []
        scored_ref: list[int] = []
        for head in heads[r * folds : (r + 1) * folds]:
            ((_, _, x, y),) = [e for e in log if e[0] == "fit" and e[1] == head]
            trained = rows(x)
            assert not any(kind == "ref" for kind, _ in trained)  # no head trains on a reference row
            trained_eval = {i for kind, i in trained if kind == "eval"}
            trained_negatives += sum(1 for (kind, _), label in zip(trained, y) if kind == "eval" and label == 0)
            fits = [e for e in log if e[0] == "member" and e[1] == head]
            assert len(fits) == members and len({e[3] for e in fits}) == members  # own seeds
            for e in fits:  # every member trains on the head's rows, and only those
                np.testing.assert_array_equal(e[2], np.asarray(x, np.float32))
            for _, _, scored, n_nets in [e for e in log if e[0] == "score" and e[1] == head]:
                assert n_nets == members
                kinds = rows(scored)
                assert {kind for kind, _ in kinds} <= {"eval", "ref"}
                got = [i for kind, i in kinds if kind == "eval"]
                assert trained_eval.isdisjoint(got)  # no row scored by a head that saw it
                scored_eval += got
                scored_ref += [i for kind, i in kinds if kind == "ref"]
        assert sorted(scored_eval) == list(range(len(view)))  # each row once per round
        assert sorted(scored_ref) == list(range(len(reference)))
    assert trained_negatives > 0  # the evaluation rows taken as close were covered too


def test_bad_parameters_are_refused():
    for bad in ({"threshold_quantile": 1.0}, {"folds": 1}, {"C": 0}):
        with pytest.raises(ValueError):
            make_detector("sal", **bad)
