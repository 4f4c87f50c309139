"""Post-hoc baselines on the close-set model: they read its logits and features, never a model.

They run in milliseconds and can be recomputed from a finished run's stage 02 files. Each
reads the close-set model's outputs, which the protocol changes, so stage 03 recomputes
them per protocol. Higher = more likely open.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp, softmax

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData


class MaxSoftmax(Detector):
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017): the paper's baseline."""

    name = "msp"
    reads_model_outputs = True

    def score(self, data: OpenSetData) -> np.ndarray:
        return -softmax(data.logits, axis=1).max(axis=1)


class MaxLogit(Detector):
    """Negative maximum logit (Hendrycks et al. 2022)."""

    name = "max_logit"
    reads_model_outputs = True

    def score(self, data: OpenSetData) -> np.ndarray:
        return -data.logits.max(axis=1)


class Energy(Detector):
    """Free energy ``-T logsumexp(logits / T)`` (Liu et al. 2020); high energy = open."""

    name = "energy"
    reads_model_outputs = True

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def __repr__(self) -> str:
        return f"Energy(temperature={self.temperature})"

    def score(self, data: OpenSetData) -> np.ndarray:
        t = self.temperature
        return -t * logsumexp(data.logits / t, axis=1)


class Entropy(Detector):
    """Entropy of the predicted class distribution."""

    name = "entropy"
    reads_model_outputs = True

    def score(self, data: OpenSetData) -> np.ndarray:
        p = softmax(data.logits, axis=1)
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)


class Mahalanobis(Detector):
    """Minimum Mahalanobis distance to the class means, with one covariance shared by the
    classes, both from the close-set *training* features (Lee et al. 2018, no input
    perturbation)."""

    name = "mahalanobis"
    reads_model_outputs = True

    def fit(self, data: OpenSetData) -> Detector:
        x, y = np.asarray(data.train_features, np.float64), np.asarray(data.train_targets)
        classes = np.unique(y)
        self.means_ = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - self.means_[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(x)
        self.precision_ = np.linalg.pinv(cov + 1e-6 * np.eye(cov.shape[0]), hermitian=True)
        return self

    def score(self, data: OpenSetData) -> np.ndarray:
        x = np.asarray(data.features, np.float64)
        d = x[:, None, :] - self.means_[None, :, :]
        m = np.einsum("nkc,cd,nkd->nk", d, self.precision_, d)
        return m.min(axis=1)


class KNN(Detector):
    """Distance to the k-th nearest close-set training feature after L2 normalisation
    (Sun et al. 2022)."""

    name = "knn"
    reads_model_outputs = True

    def __init__(self, k: int = 50):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k

    def __repr__(self) -> str:
        return f"KNN(k={self.k})"

    def fit(self, data: OpenSetData) -> Detector:
        bank = np.asarray(data.train_features, np.float32)
        self.bank_ = bank / np.linalg.norm(bank, axis=1, keepdims=True).clip(1e-12)
        return self

    def score(self, data: OpenSetData) -> np.ndarray:
        q = np.asarray(data.features, np.float32)
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        k = min(self.k, len(self.bank_))
        out = np.empty(len(q), np.float32)
        for start in range(0, len(q), 2048):  # bounded memory: 2048 x bank similarities at a time
            sim = q[start : start + 2048] @ self.bank_.T
            kth = np.partition(-sim, k - 1, axis=1)[:, k - 1]
            out[start : start + 2048] = 1.0 + kth  # 1 - cosine similarity of the k-th neighbour
        return out
