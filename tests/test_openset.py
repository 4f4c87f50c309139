"""Detectors: one sign (higher = open), the two protocols, small-loss selection, and the
cycle detector finding noisy labels where it must."""

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.metrics import openset_metrics
from ferlib.openset import DETECTORS, OpenSetData, apply_protocol, make_detector
from ferlib.openset.cycle import CycleConfig, CycleDetector, small_loss_selection
from ferlib.openset.data import TABLE_COLUMNS


def _data(n_close=300, n_open=100, k=4, dim=16, seed=0, images=None):
    """Close samples: confident logits, features near their class mean. Open samples:
    flat logits, features far from every class mean."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n_close)
    means = rng.normal(0, 4, (k, dim))
    close_f = means[y] + rng.normal(0, 1, (n_close, dim))
    open_f = rng.normal(0, 1, (n_open, dim)) * 4 + 12
    close_l = np.eye(k)[y] * 6 + rng.normal(0, 1, (n_close, k))
    open_l = rng.normal(0, 1, (n_open, k))
    logits = np.concatenate([close_l, open_l])
    n = n_close + n_open
    table = pd.DataFrame({"index": np.arange(n), "path": [f"img{i}.png" for i in range(n)],
                          "label": np.r_[y, np.full(n_open, 9)], "target": np.r_[y, -np.ones(n_open, int)],
                          "pseudo": logits.argmax(1), "is_open": np.r_[np.zeros(n_close, bool), np.ones(n_open, bool)],
                          "origin": ["test"] * n_close + ["train"] * n_open,
                          "source_index": np.r_[np.arange(n_close), np.arange(n_open)]})[TABLE_COLUMNS]
    ty = rng.integers(0, k, 500)
    return OpenSetData(table=table, logits=logits, features=np.concatenate([close_f, open_f]),
                       train_features=means[ty] + rng.normal(0, 1, (500, dim)), train_targets=ty, images=images)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_posthoc_sign_higher_is_open(name):
    data = _data()
    scores = make_detector(name).fit_score(data)
    assert scores.shape == (len(data),)
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.9, name


def test_energy_matches_definition():
    data = _data()
    expected = -np.log(np.exp(data.logits).sum(1))
    np.testing.assert_allclose(make_detector("energy").score(data), expected, rtol=1e-6)


def test_unknown_detector():
    with pytest.raises(ValueError, match="unknown detector"):
        make_detector("odin")


def test_protocols():
    data = _data()
    n_train_split = 400
    rng = np.random.default_rng(1)
    all_logits = rng.normal(0, 1, (n_train_split, data.num_classes))
    all_feats = rng.normal(0, 1, (n_train_split, data.features.shape[1]))
    honest = apply_protocol(data, "honest")
    assert honest.protocol == "honest" and np.array_equal(honest.logits, data.logits)
    ref = apply_protocol(data, "reference", all_logits, all_feats, seed=3)
    again = apply_protocol(data, "reference", all_logits, all_feats, seed=3)
    assert ref.protocol == "reference" and np.array_equal(ref.logits, again.logits)
    test_rows = data.table["origin"].to_numpy() == "test"
    # test rows untouched; the open class's training rows get a shuffled loader's outputs
    assert np.array_equal(ref.logits[test_rows], data.logits[test_rows])
    perm = np.random.default_rng(3).permutation(n_train_split)
    donors = perm[data.table["source_index"].to_numpy()[~test_rows]]
    assert np.array_equal(ref.logits[~test_rows], all_logits[donors])
    assert np.array_equal(ref.pseudo[~test_rows], all_logits[donors].argmax(1))
    assert np.array_equal(ref.features[~test_rows], all_feats[donors])
    assert np.array_equal(data.pseudo, honest.pseudo)  # the input is not modified
    with pytest.raises(ValueError, match="whole training split"):
        apply_protocol(data, "reference")
    with pytest.raises(ValueError, match="protocol"):
        apply_protocol(data, "sloppy")


def test_subset_reindexes():
    data = _data()
    sub = data.subset(data.table["origin"].to_numpy() == "test")
    assert len(sub) == 300 and list(sub.table["index"]) == list(range(300))
    assert not sub.is_open.any()
    np.testing.assert_array_equal(sub.logits, data.logits[:300])


def test_small_loss_selection():
    loss = np.array([5, 1, 2, 9, 3, 0.5, 7, 8.0])
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(small_loss_selection(loss, labels, 0.5, False), [1, 2, 4, 5])
    # balanced: two smallest within each class, though class 1 holds the global minimum
    np.testing.assert_array_equal(small_loss_selection(loss, labels, 0.5, True), [1, 2, 4, 5])
    loss2 = np.array([5, 1, 2, 9, 30, 40, 70, 80.0])
    np.testing.assert_array_equal(small_loss_selection(loss2, labels, 0.5, False), [0, 1, 2, 3])
    np.testing.assert_array_equal(small_loss_selection(loss2, labels, 0.5, True), [1, 2, 4, 5])
    with pytest.raises(ValueError, match="select_ratio"):
        CycleConfig(select_ratio=0)


def _noisy_images(n=160, noise=0.25, seed=0):
    """Three classes coded by a bright square's position; a quarter of the labels flipped
    to another class (symmetric noise): the noisy rows play the open samples."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = g.integers(0, 40, (n, 3, 32, 32)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, :, 4:14, 2 + 10 * c:12 + 10 * c] = 230
    noisy = g.random(n) < noise
    pseudo = np.where(noisy, (y + g.integers(1, 3, n)) % 3, y)
    table = pd.DataFrame({"index": np.arange(n), "path": [""] * n, "label": y, "target": y, "pseudo": pseudo,
                          "is_open": noisy, "origin": "test", "source_index": np.arange(n)})[TABLE_COLUMNS]
    logits = np.eye(3)[pseudo] * 3.0
    return OpenSetData(table=table, logits=logits, features=np.zeros((n, 4)), train_features=np.zeros((3, 4)),
                       train_targets=np.arange(3), images=torch.from_numpy(x))


@pytest.mark.slow
def test_cycle_detector_finds_noisy_labels(tmp_path):
    """Noisy labels must get larger mean snapshot loss than clean ones; an MSP on the
    pseudo-label logits (all equally confident) cannot tell them apart."""
    data = _noisy_images()
    cfg = CycleConfig(input_size=32, cycles=2, epochs_per_cycle=3, batch_size=32, lr=2e-3, progress=False,
                      out_dir=str(tmp_path / "cycle"))
    det = CycleDetector(cfg).fit(data)
    scores = det.score(data)
    auroc = openset_metrics(scores, data.is_open)["auroc"]
    msp = openset_metrics(make_detector("msp").score(data), data.is_open)["auroc"]
    assert auroc > 0.85, auroc
    assert auroc > msp + 0.3
    assert det.snapshot_losses_.shape == (4, len(data))  # 2 networks x 2 cycles
    assert len(det.selected_) == 2 and det.selected_[0]["sizes"][0] < len(data)
    assert (tmp_path / "cycle" / "detector.json").exists()
    # resuming from the checkpoints recomputes the same scores without training
    again = CycleDetector(cfg).fit(data).score(data)
    np.testing.assert_allclose(again, scores, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("switches", [dict(lam=0.0), dict(cycle_training=False)])
def test_cycle_ablations_run(switches):
    data = _noisy_images(60)
    det = CycleDetector(CycleConfig(input_size=32, cycles=1, epochs_per_cycle=1, batch_size=30, progress=False,
                                    **switches))
    scores = det.fit_score(data)
    assert scores.shape == (60,) and np.isfinite(scores).all()


def test_cycle_errors():
    data = _data()
    with pytest.raises(ValueError, match="images"):
        CycleDetector(CycleConfig(progress=False)).fit(data)
    with pytest.raises(RuntimeError, match="fit"):
        CycleDetector().score(data)


@pytest.mark.slow
def test_contrast_detector_flags_population_absent_from_training():
    """Open samples carry a pattern no training image has; close samples look like
    training images. The cross-fitted discriminator must rank the open ones first, using
    no evaluation label."""
    from ferlib.openset.contrast import ContrastConfig, ContrastDetector

    g = np.random.default_rng(0)

    def faces(n, open_):
        x = g.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        x[:, :, 8:24, 8:24] = 120 + g.integers(0, 40, (n, 1, 1, 1))
        if open_:
            x[:, :, 2:8, :] = 240  # a bright band absent from every training image
        return x

    data = _data(n_close=60, n_open=40, images=torch.from_numpy(np.concatenate([faces(60, False), faces(40, True)])))
    data.train_images = torch.from_numpy(faces(200, False))
    det = ContrastDetector(ContrastConfig(input_size=32, epochs=3, batch_size=32, progress=False))
    auroc = openset_metrics(det.fit_score(data), data.is_open)["auroc"]
    assert auroc > 0.9, auroc


def test_tknn_equals_brute_force_neighbour_share():
    data = _data(n_close=40, n_open=20, dim=8, seed=3)
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


def test_tknn_finds_a_tight_open_cluster_inside_a_close_class():
    """An open population inside a close class's region: far-from-training (knn) cannot
    see it, the share of evaluation neighbours can."""
    rng = np.random.default_rng(1)
    data = _data(n_close=300, n_open=100, dim=16, seed=1)
    cls0 = data.train_features[data.train_targets == 0].mean(0)
    data.features[300:] = cls0 + rng.normal(0, 1, 16) * 0.5 + rng.normal(0, 0.2, (100, 16))
    tknn = openset_metrics(make_detector("tknn").fit_score(data), data.is_open)["auroc"]
    knn = openset_metrics(make_detector("knn").fit_score(data), data.is_open)["auroc"]
    assert tknn > 0.95 and tknn > knn + 0.2, (tknn, knn)


def test_tknn_needs_training_features():
    data = _data()
    data.train_features = None
    with pytest.raises(ValueError, match="train_features"):
        make_detector("tknn").score(data)
    with pytest.raises(ValueError, match="k must be"):
        make_detector("tknn", k=0)
