"""A cross-fitted binary head on frozen features: close training rows against candidate
open rows picked from the evaluation set.

Detectors that learn from the unlabeled evaluation set (SAL's second step, outlier exposure on
pseudo-outliers) all end in the same classifier: label the close training rows 0, the
candidate evaluation rows 1, fit, and score every evaluation row. Scoring a row with a
classifier that was trained on it as a candidate would reward memorisation, so the evaluation
rows are split in seeded folds and each fold is scored by a classifier fitted without that
fold's candidates (cross-fitting). The classifier is one of :data:`BINARY_HEADS`, on
standardised pooled features of the close-set model, classes weighted to balance the usually
few candidates against the many training rows: ``logistic`` (linear, the default) or ``mlp``
(:class:`ferlib.openset.mlp_head.MLPBinaryHead`, one hidden layer); both take seconds on a CPU.
A new head is one class with ``fit``/``predict_proba`` and one line of :data:`BINARY_HEADS`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np

__all__ = [
    "BINARY_HEADS",
    "cross_fitted_binary_fit",
    "cross_fitted_binary_scores",
    "fold_assignment",
    "make_binary_head",
]

#: binary heads by name: "module:factory", called as ``factory(C=..., seed=..., **head_params)``
BINARY_HEADS: dict[str, str] = {
    "logistic": "ferlib.openset.binary_head:logistic_head",
    "mlp": "ferlib.openset.mlp_head:MLPBinaryHead",
}


def logistic_head(C: float = 1.0, seed: int = 0):
    """scikit-learn's class-balanced logistic regression (``seed`` unused: lbfgs is deterministic)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=2000, class_weight="balanced")


def make_binary_head(name: str, C: float = 1.0, seed: int = 0, head_params: dict[str, Any] | None = None):
    """A fresh classifier ``name`` of :data:`BINARY_HEADS`; ``C`` reaches only the heads that
    take it (the logistic one), ``head_params`` the head's own settings."""
    if name not in BINARY_HEADS:
        raise ValueError(f"unknown binary head {name!r}; choose one of {sorted(BINARY_HEADS)}")
    module, attr = BINARY_HEADS[name].split(":")
    factory = getattr(importlib.import_module(module), attr)
    params = dict(head_params or {})
    if "C" in inspect.signature(factory).parameters:
        params.setdefault("C", C)
    try:
        return factory(seed=seed, **params)
    except TypeError as err:
        raise ValueError(f"binary head {name!r}: bad head_params {params}: {err}") from None


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
    head: str = "logistic",
    head_params: dict[str, Any] | None = None,
    negatives: np.ndarray | None = None,
) -> np.ndarray:
    """The evaluation rows' scores of :func:`cross_fitted_binary_fit` (see there)."""
    return cross_fitted_binary_fit(
        features, close_features, candidates, folds, C, seed, head, head_params, negatives=negatives
    )[0]


def cross_fitted_binary_fit(
    features: np.ndarray,
    close_features: np.ndarray,
    candidates: np.ndarray,
    folds: int = 5,
    C: float = 1.0,
    seed: int = 0,
    head: str = "logistic",
    head_params: dict[str, Any] | None = None,
    negatives: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(scores, reference_scores)``: P(candidate | x) for every evaluation row
    (``features``), each fold scored by a binary head (``head``, one of :data:`BINARY_HEADS`)
    fitted on ``close_features`` (label 0) and the candidates outside the fold (label 1).
    ``candidates`` is a boolean mask over the evaluation
    rows; it needs at least two rows, and every fold's complement at least one.

    ``negatives``: an optional boolean mask over the evaluation rows, disjoint from
    ``candidates``, of rows taken as close (label 0) beside ``close_features``; like the
    candidates they train only the folds they are not in, so no row is scored by a head that
    saw it. ``close_features`` may then be empty (a head that never reads the training rows).

    ``reference``: optional rows that no head trains on (held-out close rows), each scored by
    the head of a seeded fold, so their scores are distributed like the evaluation rows'
    out-of-fold scores (``reference_scores``; ``None`` without ``reference``)."""
    from sklearn.preprocessing import StandardScaler

    candidates = np.asarray(candidates, dtype=bool)
    feats = np.asarray(features, np.float64)
    close = np.asarray(close_features, np.float64)
    if len(candidates) != len(feats):
        raise ValueError(f"candidates has {len(candidates)} rows, features {len(feats)}")
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    if negatives is None:
        negatives = np.zeros(len(feats), dtype=bool)
    negatives = np.asarray(negatives, dtype=bool)
    if len(negatives) != len(feats):
        raise ValueError(f"negatives has {len(negatives)} rows, features {len(feats)}")
    if (negatives & candidates).any():
        raise ValueError(f"{int((negatives & candidates).sum())} rows are both candidates and negatives")
    if close.size == 0:
        close = close.reshape(0, feats.shape[1])
    n_neg = len(close) + int(negatives.sum())
    if candidates.sum() < 2 or n_neg == 0:
        raise ValueError(
            f"need close rows (training or negatives) and at least 2 candidates, "
            f"got {n_neg} and {int(candidates.sum())}"
        )
    make_binary_head(head, C, seed, head_params)  # refuse a bad head before any fitting
    fold = fold_assignment(len(feats), folds, seed)
    out = np.empty(len(feats))
    ref = None if reference is None else np.asarray(reference, np.float64)
    ref_fold = None if ref is None else fold_assignment(len(ref), folds, seed + 1)
    ref_out = None if ref is None else np.empty(len(ref))
    for k in range(folds):
        held = fold == k
        cand = feats[candidates & ~held]
        neg = np.concatenate([close, feats[negatives & ~held]])
        if len(cand) == 0 or len(neg) == 0:
            raise ValueError(f"fold {k} leaves no candidate or no close row to train on; use fewer folds")
        x = np.concatenate([neg, cand])
        y = np.r_[np.zeros(len(neg)), np.ones(len(cand))]
        scaler = StandardScaler().fit(x)
        clf = make_binary_head(head, C, seed + k, head_params)
        clf.fit(scaler.transform(x), y)
        out[held] = clf.predict_proba(scaler.transform(feats[held]))[:, 1]
        if ref is not None and (ref_fold == k).any():
            ref_out[ref_fold == k] = clf.predict_proba(scaler.transform(ref[ref_fold == k]))[:, 1]
    return out, ref_out
