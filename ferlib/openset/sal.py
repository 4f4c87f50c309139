"""SAL (Du et al., ICLR 2024, "How Does Unlabeled Data Provably Help Out-of-Distribution
Detection?"): separate candidate outliers from the unlabeled evaluation set by their
last-layer gradients, then learn a binary open-vs-close classifier from them.

Filter (as the released code, deeplearning-wisc/sal): each evaluation row gets the gradient of
the cross-entropy at its own predicted label (the pseudo label) with respect to the last
layer's weights; only the predicted class's row of that gradient is used, which for a linear
last layer is ``(p_c - 1) * f`` (``p`` the softmax, ``f`` the pooled feature). Rows are grouped
by predicted class ``c``; each group is centred on the mean gradient of the close *training*
rows of class ``c`` (their true labels; the released code's ``avg_on_wild=0``), and the
filter score is the absolute projection on the group's top right singular vector. Gradients
of the open population line up along one direction away from the close mean; close rows
scatter around it. The threshold is the ``threshold_quantile`` (0.95) quantile of the same
score computed on the close training rows themselves, so about 5% of close rows would pass it.

Binary head: the released code fine-tunes the whole network with an extra logistic output on
close training images (label 1) against the candidates (label 0). The kit trains a logistic
regression on the close-set model's frozen pooled features instead (seconds on a CPU; the
network version is a documented deviation), **cross-fitted**: the evaluation rows are split
in ``folds`` seeded folds and each fold is scored by a classifier that never saw its rows as
candidates. Score = the classifier's probability of "candidate", higher = more likely open.

``train_logits`` are not saved by stage 02; they come from the last layer recovered by least
squares (:func:`ferlib.openset.pood.recover_linear_head`), so the detector needs a head that is
one linear layer on the pooled features (``linear``, ``uncertainty``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ferlib.openset.base import Detector
from ferlib.openset.binary_head import cross_fitted_binary_scores
from ferlib.openset.data import OpenSetData

__all__ = ["SAL", "SALConfig", "SALFilter", "gradient_filter_scores"]


@dataclass
class SALConfig:
    """``threshold_quantile``: quantile of the close training rows' filter scores above which
    an evaluation row is a candidate outlier (the released code's ``thres_id`` = 0.95).
    ``folds``: cross-fitting folds of the binary head. ``C``: inverse L2 strength of its
    logistic regression (scikit-learn's default 1.0). ``seed``: the fold split."""

    threshold_quantile: float = 0.95
    folds: int = 5
    C: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile}")
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if not self.C > 0:
            raise ValueError(f"C must be positive, got {self.C}")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _class_row_gradients(features: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row ``labels[i]`` of d CE(logits_i, labels_i) / d W for a linear last layer: ``(p_y - 1) f``."""
    p = _softmax(logits)[np.arange(len(labels)), labels]
    return (p - 1.0)[:, None] * np.asarray(features, np.float64)


def _projection_scores(grads: np.ndarray, centre: np.ndarray) -> np.ndarray:
    centred = grads - centre
    if len(centred) < 2:
        return np.abs(centred).sum(1) * 0.0
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.abs(centred @ vt[0])


def gradient_filter_scores(
    features: np.ndarray,
    logits: np.ndarray,
    labels: np.ndarray,
    ref_features: np.ndarray,
    ref_logits: np.ndarray,
    ref_targets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """SAL's filter score of each row (predicted labels ``labels``), and the same score of the
    reference (close training) rows computed among themselves, for the threshold.

    Rows of a class with no reference row are centred on their own mean (``avg_on_wild``)."""
    labels = np.asarray(labels, np.int64)
    ref_targets = np.asarray(ref_targets, np.int64)
    g = _class_row_gradients(features, logits, labels)
    g_ref = _class_row_gradients(ref_features, ref_logits, ref_targets)
    scores = np.zeros(len(g))
    ref_scores = np.zeros(len(g_ref))
    for c in np.unique(np.r_[labels, ref_targets]):
        ref_rows = np.flatnonzero(ref_targets == c)
        rows = np.flatnonzero(labels == c)
        centre = g_ref[ref_rows].mean(0) if len(ref_rows) else (g[rows].mean(0) if len(rows) else None)
        if len(rows):
            scores[rows] = _projection_scores(g[rows], centre)
        if len(ref_rows):
            ref_scores[ref_rows] = _projection_scores(g_ref[ref_rows], centre)
    return scores, ref_scores


class SALFilter(Detector):
    """SAL's gradient filter score alone (no binary head); higher = more likely open."""

    name = "sal_filter"
    reads_model_outputs = True
    reads_pseudo_labels = True
    config_cls = SALConfig

    def _filter(self, data: OpenSetData) -> tuple[np.ndarray, float]:
        from ferlib.openset.pood import recover_linear_head

        if data.train_features is None or len(data.train_features) == 0:
            raise ValueError(f"the {self.name} detector needs the close training features (OpenSetData.train_features)")
        head = recover_linear_head(data.features, data.logits)
        train_logits = head.logits(data.train_features)
        scores, ref = gradient_filter_scores(
            data.features, data.logits, data.pseudo, data.train_features, train_logits, data.train_targets
        )
        return scores, float(np.quantile(ref, self.cfg.threshold_quantile))

    def score(self, data: OpenSetData) -> np.ndarray:
        return self._filter(data)[0]


class SAL(SALFilter):
    """SAL: gradient filter, then a cross-fitted logistic regression on the frozen pooled
    features, close training rows against the filter's candidates; higher = more likely open.

    After :meth:`score`, ``candidates_`` holds the boolean candidate mask over the evaluation
    rows (how pure it is can be read against the truth outside the detector)."""

    name = "sal"

    def score(self, data: OpenSetData) -> np.ndarray:
        filt, threshold = self._filter(data)
        candidates = filt > threshold
        self.candidates_ = candidates
        if candidates.sum() < 2:
            return filt  # nothing to learn from: the filter score is all there is
        c = self.cfg
        return cross_fitted_binary_scores(data.features, data.train_features, candidates, c.folds, c.C, c.seed)
