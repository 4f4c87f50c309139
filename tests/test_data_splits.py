"""Open-set protocol: nothing lost, nothing leaked, targets contiguous, maps round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ferlib.data import LabelMap, carve_validation, load_ferplus, openset_split
from ferlib.emotions import BASIC7, Emotion

E = Emotion


def _synthetic_labels() -> tuple[np.ndarray, np.ndarray]:
    """Unbalanced labels over the basic seven, like real FER data (neutral-heavy)."""
    rng = np.random.default_rng(0)
    classes = np.asarray([int(c) for c in BASIC7])
    weights = np.asarray([30, 25, 12, 12, 9, 2, 10], dtype=float)
    train = rng.choice(classes, size=900, p=weights / weights.sum())
    test = rng.choice(classes, size=300, p=weights / weights.sum())
    return train, test


@pytest.fixture(scope="module")
def ferplus_labels(ferplus_root) -> tuple[np.ndarray, np.ndarray]:
    return load_ferplus(ferplus_root, "train").labels, load_ferplus(ferplus_root, "test").labels


def _check_protocol(train: np.ndarray, test: np.ndarray, open_class: Emotion) -> None:
    split = openset_split(train, test, BASIC7, open_class)
    assert split.open_class is open_class
    # no sample lost, none counted twice
    together = np.concatenate([split.train_index, split.eval_train_index])
    assert np.array_equal(np.sort(together), np.arange(len(train)))
    assert np.intersect1d(split.train_index, split.eval_train_index).size == 0
    # the open class is never trained on, and all of its training rows are evaluated
    assert not np.any(train[split.train_index] == open_class)
    assert np.all(train[split.eval_train_index] == open_class)
    # contiguous targets 0..5 in enum order, shifting classes above the open one down
    assert split.label_map.classes == tuple(c for c in BASIC7 if c is not open_class)
    assert sorted(np.unique(split.train_targets).tolist()) == list(range(6))
    expected = train[split.train_index] - (train[split.train_index] > int(open_class))
    assert np.array_equal(split.train_targets, expected)
    assert np.array_equal(split.label_map.decode(split.train_targets), train[split.train_index])
    # evaluation set = [test rows, open-class training rows]
    assert np.array_equal(split.eval_test_index, np.arange(len(test)))
    assert split.n_eval == len(test) + int(np.sum(train == open_class))
    eval_labels = np.concatenate([test, train[split.eval_train_index]])
    assert np.array_equal(split.eval_labels, eval_labels)
    assert np.array_equal(split.eval_is_open, eval_labels == open_class)
    assert np.array_equal(split.eval_targets == -1, split.eval_is_open)
    closed = ~split.eval_is_open
    assert np.array_equal(split.label_map.decode(split.eval_targets[closed]), eval_labels[closed])
    assert split.eval_origin.tolist() == ["test"] * len(test) + ["train"] * len(split.eval_train_index)


@pytest.mark.parametrize("open_class", BASIC7, ids=lambda e: e.label)
def test_openset_protocol_synthetic(open_class):
    train, test = _synthetic_labels()
    _check_protocol(train, test, open_class)


@pytest.mark.ferplus
@pytest.mark.parametrize("open_class", BASIC7, ids=lambda e: e.label)
def test_openset_protocol_ferplus(open_class, ferplus_labels):
    train, test = ferplus_labels
    _check_protocol(train, test, open_class)


@pytest.mark.ferplus
def test_openset_ferplus_surprise_sizes(ferplus_labels):
    # Numbers quoted in METHODS.md: 7,073 evaluation samples of which 4,004 open.
    split = openset_split(*ferplus_labels, BASIC7, "surprise")
    assert split.n_eval == 7073 and int(split.eval_is_open.sum()) == 4004
    assert len(split.train_index) == 28217 - 3557


def test_close_set_split():
    train, test = _synthetic_labels()
    split = openset_split(train, test, BASIC7, None)
    assert split.open_class is None and split.label_map.classes == BASIC7
    assert np.array_equal(split.train_index, np.arange(len(train)))
    assert np.array_equal(split.train_targets, train)  # basic seven = canonical 0..6
    assert split.eval_train_index.size == 0 and split.n_eval == len(test)
    assert not split.eval_is_open.any()


def test_open_class_spellings_and_tensor_labels():
    train, test = _synthetic_labels()
    ref = openset_split(train, test, BASIC7, E.FEAR)
    for spelling in ("fear", "Fearful", 6, np.int64(6)):
        other = openset_split(torch.from_numpy(train), list(test), BASIC7, spelling)
        assert other.open_class is E.FEAR
        assert np.array_equal(other.train_index, ref.train_index)
        assert np.array_equal(other.train_targets, ref.train_targets)


def test_openset_rejects_stray_labels_and_unknown_open_class():
    train, test = _synthetic_labels()
    with pytest.raises(ValueError, match="training labels \\[7\\]"):
        openset_split(np.append(train, 7), test, BASIC7, "fear")
    with pytest.raises(ValueError, match="test labels \\[7\\]"):
        openset_split(train, np.append(test, 7), BASIC7, "fear")
    with pytest.raises(ValueError, match="not one of the classes"):
        openset_split(train, test, BASIC7, "contempt")


def test_label_map_round_trip_and_order():
    lm = LabelMap((E.FEAR, E.NEUTRAL, "sad"))
    assert lm.classes == (E.NEUTRAL, E.SADNESS, E.FEAR)  # enum order whatever the input
    assert lm.names == ["neutral", "sadness", "fear"] and len(lm) == 3
    assert lm.encode(np.array([6, 0, 3, 1, 7])).tolist() == [2, 0, 1, -1, -1]
    assert lm.decode([2, 0, 1]).tolist() == [6, 0, 3]
    everything = np.arange(8)
    inside = lm.encode(everything) >= 0
    assert np.array_equal(lm.decode(lm.encode(everything)[inside]), everything[inside])
    assert np.array_equal(lm.encode(lm.decode(np.arange(3))), np.arange(3))
    assert lm.encode(torch.tensor([3, 6])).tolist() == [1, 2]
    with pytest.raises(ValueError):
        lm.decode([-1])
    with pytest.raises(ValueError):
        lm.decode([3])
    with pytest.raises(ValueError):
        lm.encode([8])
    with pytest.raises(ValueError, match="duplicate"):
        LabelMap((E.FEAR, "fear"))


def test_carve_validation_stratified_deterministic_disjoint():
    train, _ = _synthetic_labels()
    tr, va = carve_validation(train, 0.2, seed=0)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(train)))
    assert np.intersect1d(tr, va).size == 0
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    for c in np.unique(train):
        n = int(np.sum(train == c))
        assert int(np.sum(train[va] == c)) == max(1, round(0.2 * n))
    tr2, va2 = carve_validation(train, 0.2, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    _, va3 = carve_validation(train, 0.2, seed=1)
    assert not np.array_equal(va, va3)
    assert len(va3) == len(va)  # same sizes, different draw


def test_carve_validation_small_classes_and_edges():
    targets = np.array([0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
    tr, va = carve_validation(targets, 0.1, seed=0)
    assert sorted(targets[va].tolist()) == [0, 2]  # >=1 per class of 2+, singleton kept in train
    assert set(targets[tr].tolist()) == {0, 1, 2}
    tr, va = carve_validation(np.array([0, 0, 1, 1, 1]), 0.9, seed=0)
    assert sorted(np.array([0, 0, 1, 1, 1])[tr].tolist()) == [0, 1]  # never a whole class
    tr, va = carve_validation(targets, 0.0, seed=0)
    assert va.size == 0 and tr.size == len(targets)
    with pytest.raises(ValueError):
        carve_validation(targets, 1.0, seed=0)
