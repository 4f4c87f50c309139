"""Post-hoc detectors and tknn: one sign (higher = open), the definitions, tknn's neighbour share."""

import numpy as np
import pytest

from ferlib.metrics import openset_metrics
from ferlib.openset import available_detectors, detector_class, make_detector
from ferlib.openset.pood import PoodDetector

#: pytorch-ood's detectors (the adapter) have their own tests, on data that meets their assumptions
#: (non-negative penultimate activations, logits affine in them): tests/openset/test_openset_pood.py
POOD = [n for n in available_detectors() if issubclass(detector_class(n), PoodDetector)]
CHEAP = [n for n in available_detectors() if not detector_class(n).trains_networks and n not in POOD]


def test_cheap_detectors_are_every_untrained_one():
    assert set(CHEAP) == {
        "msp",
        "max_logit",
        "energy",
        "entropy",
        "mahalanobis",
        "knn",
        "tknn",
        "uncertainty",
        "small_loss",
        "disagreement",
        "sal_filter",
        "sal",
        "pseudo_oe",
    }


@pytest.mark.parametrize("name", CHEAP)
def test_posthoc_sign_higher_is_open(name, make_features_data):
    data = make_features_data()
    scores = make_detector(name).fit_score(data.detector_view())
    assert scores.shape == (len(data),)
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.9, name


def test_energy_matches_definition(make_features_data):
    data = make_features_data()
    expected = -np.log(np.exp(data.logits).sum(1))
    np.testing.assert_allclose(make_detector("energy").score(data), expected, rtol=1e-6)
    t = 2.0
    np.testing.assert_allclose(
        make_detector("energy", temperature=t).score(data), -t * np.log(np.exp(data.logits / t).sum(1)), rtol=1e-6
    )


def test_tknn_equals_brute_force_neighbour_share(make_features_data):
    data = make_features_data(n_close=40, n_open=20, dim=8, seed=3)
    k = 7
    ev = data.features / np.linalg.norm(data.features, axis=1, keepdims=True)
    tr = data.train_features / np.linalg.norm(data.train_features, axis=1, keepdims=True)
    pool = np.concatenate([ev, tr])
    expected = []
    for i, q in enumerate(ev):
        sim = pool @ q
        sim[i] = -np.inf
        expected.append((np.argsort(-sim, kind="stable")[:k] < len(ev)).mean())
    got = make_detector("tknn", k=k, chunk=16).score(data)  # several chunks
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_tknn_finds_a_tight_open_cluster_inside_a_close_class(make_features_data):
    """An open population inside a close class's region: far-from-training (knn) cannot
    see it, the share of evaluation neighbours can."""
    rng = np.random.default_rng(1)
    data = make_features_data(n_close=300, n_open=100, dim=16, seed=1)
    cls0 = data.train_features[data.train_targets == 0].mean(0)
    data.features[300:] = cls0 + rng.normal(0, 1, 16) * 0.5 + rng.normal(0, 0.2, (100, 16))
    tknn = openset_metrics(make_detector("tknn").fit_score(data), data.is_open)["auroc"]
    knn = openset_metrics(make_detector("knn").fit_score(data), data.is_open)["auroc"]
    assert tknn > 0.95 and tknn > knn + 0.2, (tknn, knn)


def test_tknn_needs_training_features(make_features_data):
    data = make_features_data()
    data.train_features = None
    with pytest.raises(ValueError, match="train_features"):
        make_detector("tknn").score(data)


@pytest.mark.parametrize(
    "name, params, match",
    [("tknn", {"k": 0}, "k must be"), ("knn", {"k": 0}, "k must be"), ("energy", {"temperature": 0}, "temperature")],
)
def test_out_of_range_parameters(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_detector(name, **params)


def test_small_loss_finds_flipped_labels_where_max_softmax_cannot():
    """Every row confidently predicted as its true class; a third of the given labels flipped.
    The loss at the given label separates the flipped rows, max softmax (blind to the given
    label) does not; and the score is the cross-entropy, checked against torch's."""
    import pandas as pd
    import torch

    from ferlib.openset.data import OpenSetData

    rng = np.random.default_rng(0)
    n, k = 300, 5
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += rng.uniform(3, 6, n)
    flipped = rng.random(n) < 1 / 3
    given = np.where(flipped, (true + rng.integers(1, k, n)) % k, true)
    data = OpenSetData(
        table=pd.DataFrame({"index": np.arange(n), "pseudo": given}),
        logits=logits.astype(np.float32),
        features=np.zeros((n, 2), np.float32),
        train_features=np.empty((0, 2), np.float32),
        train_targets=np.empty(0, np.int64),
    )
    score = make_detector("small_loss").score(data)
    torch_ce = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(given), reduction="none")
    np.testing.assert_allclose(score, torch_ce.numpy(), rtol=1e-5)
    assert openset_metrics(score, flipped)["auroc"] > 0.99
    assert abs(openset_metrics(make_detector("msp").score(data), flipped)["auroc"] - 0.5) < 0.1
