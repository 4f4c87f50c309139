"""Open-set protocol helpers, on plain label arrays.

They take canonical label arrays (``FERDataset.labels`` or ``ImageCache.labels``), not
data sets, so the same code splits a data set, a cache or a test fixture.

Protocol (open-set FER, AAAI 2024): pick one open class k; train the close-set model on
the training split without k, targets re-indexed to 0..K-1 in enum order; evaluate on the
whole test split plus the training images of k (never trained on).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ferlib.emotions import Emotion, parse_emotion


def _emotion(value) -> Emotion:
    """parse_emotion that also takes numpy integers (labels often come from arrays)."""
    if isinstance(value, np.integer):
        value = int(value)
    return parse_emotion(value)


def _as_int_array(values) -> np.ndarray:
    """Labels from numpy, lists or (CPU or CUDA) torch tensors as an int64 array."""
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class LabelMap:
    """Canonical emotions <-> contiguous model targets ``0..K-1`` (classes in enum order).

    Sorting in the constructor makes the target of an emotion independent of the order
    the caller listed the classes in: two notebooks can never disagree on what target 2
    means.
    """

    classes: tuple[Emotion, ...]

    def __post_init__(self) -> None:
        classes = tuple(sorted(_emotion(c) for c in self.classes))
        if not classes:
            raise ValueError("a LabelMap needs at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate classes: {classes}")
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Display names in target order, e.g. ``["neutral", "happiness", ...]``."""
        return [c.label for c in self.classes]

    def _table(self) -> np.ndarray:
        table = np.full(len(Emotion), -1, dtype=np.int64)
        for target, emotion in enumerate(self.classes):
            table[int(emotion)] = target
        return table

    def encode(self, emotions) -> np.ndarray:
        """Canonical values -> targets; ``-1`` for emotions not in :attr:`classes` (open).

        Values outside the canonical range 0..7 are a bug upstream and raise.
        """
        values = _as_int_array(emotions)
        if values.size and (values.min() < 0 or values.max() >= len(Emotion)):
            raise ValueError(f"canonical emotion values must be in 0..{len(Emotion) - 1}")
        return self._table()[values]

    def decode(self, targets) -> np.ndarray:
        """Targets ``0..K-1`` -> canonical values (int64). ``-1`` or out of range raises."""
        values = _as_int_array(targets)
        if values.size and (values.min() < 0 or values.max() >= len(self.classes)):
            raise ValueError(f"targets must be in 0..{len(self.classes) - 1}")
        return np.asarray([int(c) for c in self.classes], dtype=np.int64)[values]


@dataclass(frozen=True)
class OpenSetSplit:
    """Index sets of one open-set experiment.

    The evaluation set is the concatenation ``[test rows (eval_test_index), open-class
    training rows (eval_train_index)]``, in that order; ``eval_labels``, ``eval_is_open``,
    ``eval_targets`` and ``eval_origin`` follow it. Indices are rows of the training and
    test label arrays the split was built from, ascending.

    ``open_rows``: where the evaluation set's open rows come from, for manifests and result
    keys: ``"test+train"`` (the paper's protocol: the test split's open rows and the open
    class's training rows) or ``"test"`` (the test split's only, :func:`restrict_to_test_rows`).
    """

    open_class: Emotion | None
    label_map: LabelMap
    train_index: np.ndarray
    train_targets: np.ndarray
    eval_train_index: np.ndarray
    eval_test_index: np.ndarray
    eval_labels: np.ndarray
    open_rows: str = "test+train"

    @property
    def n_eval(self) -> int:
        return len(self.eval_test_index) + len(self.eval_train_index)

    @property
    def eval_is_open(self) -> np.ndarray:
        """True for evaluation samples of the open class (all False for close-set)."""
        if self.open_class is None:
            return np.zeros(self.n_eval, dtype=bool)
        return self.eval_labels == int(self.open_class)

    @property
    def eval_targets(self) -> np.ndarray:
        """Close-set targets of the evaluation samples, ``-1`` for open ones."""
        return self.label_map.encode(self.eval_labels)

    @property
    def eval_origin(self) -> np.ndarray:
        """``"test"`` or ``"train"`` per evaluation sample (the scores table's ``origin``)."""
        return np.asarray(["test"] * len(self.eval_test_index) + ["train"] * len(self.eval_train_index))


def openset_split(train_labels, test_labels, classes, open_class: Emotion | str | int | None) -> OpenSetSplit:
    """Build the open-set split for ``open_class`` among ``classes``.

    ``classes``: every class of the experiment (e.g. the basic seven); the close classes
    are ``classes`` minus ``open_class``. ``open_class=None`` is the close-set setting:
    all classes trained, evaluation = test split only.

    Every training and test label must be one of ``classes``: a stray label (say a
    contempt row with 7 classes) would otherwise vanish from both sides unnoticed.
    """
    train = _as_int_array(train_labels)
    test = _as_int_array(test_labels)
    all_classes = tuple(sorted(_emotion(c) for c in classes))
    allowed = np.asarray([int(c) for c in all_classes], dtype=np.int64)
    for name, arr in (("training", train), ("test", test)):
        stray = np.setdiff1d(np.unique(arr), allowed)
        if stray.size:
            raise ValueError(f"{name} labels {stray.tolist()} are not in classes {[c.label for c in all_classes]}")

    if open_class is None:
        label_map = LabelMap(all_classes)
        train_index = np.arange(len(train), dtype=np.int64)
        eval_train_index = np.zeros(0, dtype=np.int64)
        opened: Emotion | None = None
    else:
        opened = _emotion(open_class)
        if opened not in all_classes:
            raise ValueError(f"open class {opened.label} is not one of the classes")
        close = tuple(c for c in all_classes if c is not opened)
        if not close:
            raise ValueError("at least one close class must remain")
        label_map = LabelMap(close)
        is_open = train == int(opened)
        train_index = np.flatnonzero(~is_open).astype(np.int64)
        eval_train_index = np.flatnonzero(is_open).astype(np.int64)

    eval_test_index = np.arange(len(test), dtype=np.int64)
    return OpenSetSplit(
        open_class=opened,
        label_map=label_map,
        train_index=train_index,
        train_targets=label_map.encode(train[train_index]),
        eval_train_index=eval_train_index,
        eval_test_index=eval_test_index,
        eval_labels=np.concatenate([test, train[eval_train_index]]),
    )


#: the values of :attr:`OpenSetSplit.open_rows`
OPEN_ROWS = ("test+train", "test")


def restrict_to_test_rows(split: OpenSetSplit) -> OpenSetSplit:
    """``split`` with its evaluation set cut to the test split's rows: the open class's
    training rows are left out, the test split's open and close rows stay.

    Why: on a data set split by subject, the open class's training images show people whose
    other expressions the close-set model trained on, while every test image shows a person it
    never saw. Beside unseen people's close images, a detector that reads the evaluation set
    (or merely how familiar a face looks) then separates seen from unseen people instead of
    the expression. With the test split's rows only, open and close rows come from the same
    unseen people, and only the expression tells them apart.
    """
    n_test = len(split.eval_test_index)
    return replace(
        split,
        eval_train_index=np.zeros(0, dtype=np.int64),
        eval_labels=split.eval_labels[:n_test].copy(),
        open_rows="test",
    )


def tuning_index(valid_labels, split: OpenSetSplit) -> np.ndarray:
    """Rows of a validation split that form the *tuning* evaluation set of ``split``: its
    close-class rows (the model-selection rows) and its open-class rows, ascending.

    The tuning set is where hyper-parameters are chosen; it is never reported. It comes
    from a split of its own (the data set's validation split), so it shares no row with
    the reported evaluation set (the test split and the open class's training rows) by
    construction. A row of a class that is neither close nor the open one (none after
    :func:`~ferlib.data.prepare.load_splits` dropped the experiment's other classes) is
    left out. Raises for the close-set setting (no open class: nothing to detect).
    """
    if split.open_class is None:
        raise ValueError("the tuning set needs an open class (open_class is none)")
    labels = _as_int_array(valid_labels)
    keep = (split.label_map.encode(labels) >= 0) | (labels == int(split.open_class))
    return np.flatnonzero(keep).astype(np.int64)


def carve_validation(targets, fraction: float, seed: int, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic hold-out: positions ``(train, val)`` into ``targets``.

    Each class contributes ``round(fraction * n_class)`` samples to validation, at least
    one when the class has two or more samples and ``fraction > 0`` (so every class can be
    checked), and never all of them (so every class is still trained). Model selection
    then happens on training data, never on the reported test split.

    ``groups`` (one subject id per sample): hold out whole subjects instead, see
    :func:`carve_groups`; consecutive frames of one person on both sides would make
    validation accuracy meaningless.

    Both outputs are sorted ascending; together they are a partition of ``range(len)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    y = _as_int_array(targets)
    if groups is not None:
        return carve_groups(groups, fraction, seed, n=len(y))
    val_parts = []
    for cls in np.unique(y):
        # One generator per class: a class's hold-out depends only on (seed, class,
        # members), not on which other classes exist or how big they are.
        rng = np.random.default_rng([seed, int(cls) + 2**31])
        members = np.flatnonzero(y == cls)
        n_val = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, len(members) - 1)
        if n_val > 0:
            val_parts.append(rng.permutation(members)[:n_val])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val] = False
    return np.flatnonzero(mask).astype(np.int64), val.astype(np.int64)


def carve_groups(groups, fraction: float, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Subject-grouped hold-out: positions ``(train, val)``, no group on both sides.

    Groups are taken in a seeded random order until at least ``round(fraction * n)``
    samples are held out; at least one group when ``fraction > 0`` and there are two or
    more, never every group (something must be trained on). Class balance then follows the
    subjects drawn, which is the price of keeping a person on one side only.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    g = np.asarray(groups, dtype=str).reshape(-1)
    if n is not None and len(g) != n:
        raise ValueError(f"{len(g)} groups for {n} samples")
    names = np.unique(g)
    order = np.random.default_rng([seed, 2**31 - 1]).permutation(len(names))
    want = int(round(fraction * len(g)))
    chosen: list[str] = []
    held = 0
    for k in order.tolist():
        if held >= want and (chosen or fraction == 0) or len(chosen) == len(names) - 1:
            break
        chosen.append(names[k])
        held += int((g == names[k]).sum())
    is_val = np.isin(g, chosen)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)
