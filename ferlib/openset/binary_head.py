"""A cross-fitted binary head on frozen features: close training rows against candidate
open rows picked from the evaluation set.

Detectors that learn from the unlabeled evaluation set (SAL's second step, outlier exposure on
pseudo-outliers) all end in the same classifier: label the close training rows 0, the
candidate evaluation rows 1, fit, and score every evaluation row. Scoring a row with a
classifier that was trained on it as a candidate would reward memorisation, so the evaluation
rows are split in seeded folds and each fold is scored by a classifier fitted without that
fold's candidates (cross-fitting). A logistic regression on standardised pooled features of
the close-set model keeps it to seconds on a CPU; classes are weighted to balance the usually
few candidates against the many training rows.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cross_fitted_binary_scores", "fold_assignment"]


def fold_assignment(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Each of ``n`` rows' fold, ``0..folds-1``: a seeded permutation taken modulo ``folds``,
    so fold sizes differ by at most one. The one fold split of the cross-fitted detectors."""
    return np.random.default_rng(seed).permutation(n) % folds


def cross_fitted_binary_scores(
    features: np.ndarray,
    close_features: np.ndarray,
    candidates: np.ndarray,
    folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """P(candidate | x) for every evaluation row (``features``), each fold scored by a logistic
    regression fitted on ``close_features`` (label 0) and the candidates outside the fold
    (label 1). ``candidates`` is a boolean mask over the evaluation rows; it needs at least two
    rows, and every fold's complement at least one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    candidates = np.asarray(candidates, dtype=bool)
    feats = np.asarray(features, np.float64)
    close = np.asarray(close_features, np.float64)
    if len(candidates) != len(feats):
        raise ValueError(f"candidates has {len(candidates)} rows, features {len(feats)}")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if candidates.sum() < 2 or len(close) == 0:
        raise ValueError(f"need close rows and at least 2 candidates, got {len(close)} and {int(candidates.sum())}")
    fold = fold_assignment(len(feats), folds, seed)
    out = np.empty(len(feats))
    for k in range(folds):
        held = fold == k
        cand = feats[candidates & ~held]
        if len(cand) == 0:
            raise ValueError(f"fold {k} leaves no candidate to train on; use fewer folds")
        x = np.concatenate([close, cand])
        y = np.r_[np.zeros(len(close)), np.ones(len(cand))]
        scaler = StandardScaler().fit(x)
        clf = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
        clf.fit(scaler.transform(x), y)
        out[held] = clf.predict_proba(scaler.transform(feats[held]))[:, 1]
    return out
