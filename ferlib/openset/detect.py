"""The detector interface and the post-hoc baselines on the close-set model.

Contract (pytorch-ood style): ``fit(data) -> self``, then ``score(data) -> ndarray`` with
one value per evaluation row, **higher = more likely open**. Baselines read the close-set
model's logits and features from :class:`~ferlib.openset.data.OpenSetData`; they never
touch a model, so they run in milliseconds and can be recomputed from a finished run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp, softmax

from ferlib.openset.data import OpenSetData


@dataclass
class NetworkConfig:
    """Settings shared by the detectors that train networks on the evaluation images."""

    arch: str = "resnet18"
    input_size: int = 48
    stem: str = "auto"  # see ferlib.models.ModelConfig: "imagenet" is ~4x cheaper at 48 px
    pretrained: str | None = None  # state-dict path (face weights or the close-set model); None = scratch
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    channels_last: bool = True
    amp: bool = False
    progress: bool = True
    out_dir: str | None = None  # checkpoints, so that a killed detector resumes


class Detector(ABC):
    """Base class: subclasses set ``name`` and implement :meth:`score` (and :meth:`fit`
    when they need training data)."""

    name: str = "detector"

    def fit(self, data: OpenSetData) -> "Detector":
        return self

    @abstractmethod
    def score(self, data: OpenSetData) -> np.ndarray:
        """One score per evaluation row; higher = more likely open."""

    def fit_score(self, data: OpenSetData) -> np.ndarray:
        return self.fit(data).score(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MaxSoftmax(Detector):
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017): the paper's baseline."""

    name = "msp"

    def score(self, data):
        return -softmax(data.logits, axis=1).max(axis=1)


class MaxLogit(Detector):
    """Negative maximum logit (Hendrycks et al. 2022)."""

    name = "max_logit"

    def score(self, data):
        return -data.logits.max(axis=1)


class Energy(Detector):
    """Free energy ``-T logsumexp(logits / T)`` (Liu et al. 2020); high energy = open."""

    name = "energy"

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def score(self, data):
        t = self.temperature
        return -t * logsumexp(data.logits / t, axis=1)


class Entropy(Detector):
    """Entropy of the predicted class distribution."""

    name = "entropy"

    def score(self, data):
        p = softmax(data.logits, axis=1)
        return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)


class Mahalanobis(Detector):
    """Minimum Mahalanobis distance to the class means, with one covariance shared by the
    classes, both from the close-set *training* features (Lee et al. 2018, no input
    perturbation)."""

    name = "mahalanobis"

    def fit(self, data):
        x, y = np.asarray(data.train_features, np.float64), np.asarray(data.train_targets)
        classes = np.unique(y)
        self.means_ = np.stack([x[y == c].mean(0) for c in classes])
        centred = x - self.means_[np.searchsorted(classes, y)]
        cov = centred.T @ centred / len(x)
        self.precision_ = np.linalg.pinv(cov + 1e-6 * np.eye(cov.shape[0]), hermitian=True)
        return self

    def score(self, data):
        x = np.asarray(data.features, np.float64)
        d = x[:, None, :] - self.means_[None, :, :]
        m = np.einsum("nkc,cd,nkd->nk", d, self.precision_, d)
        return m.min(axis=1)


class KNN(Detector):
    """Distance to the k-th nearest close-set training feature after L2 normalisation
    (Sun et al. 2022)."""

    name = "knn"

    def __init__(self, k: int = 50):
        self.k = k

    def fit(self, data):
        bank = np.asarray(data.train_features, np.float32)
        self.bank_ = bank / np.linalg.norm(bank, axis=1, keepdims=True).clip(1e-12)
        return self

    def score(self, data):
        q = np.asarray(data.features, np.float32)
        q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        k = min(self.k, len(self.bank_))
        out = np.empty(len(q), np.float32)
        for start in range(0, len(q), 2048):  # bounded memory: 2048 x bank similarities at a time
            sim = q[start:start + 2048] @ self.bank_.T
            kth = np.partition(-sim, k - 1, axis=1)[:, k - 1]
            out[start:start + 2048] = 1.0 + kth  # 1 - cosine similarity of the k-th neighbour
        return out


class TransductiveKNN(Detector):
    """Share of evaluation samples among each evaluation sample's k nearest neighbours in the
    pooled (evaluation + close training) features of the close-set model, itself excluded.

    Why. The paper's setting is transductive: the whole evaluation set is at hand. Its open
    samples form a population that the close training set lacks, so their neighbourhoods
    are made of other evaluation samples, while a close test sample sits among training
    samples of its class in proportion to the two sets' sizes. The score is a k-NN estimate
    of p(evaluation set | x), a density ratio (the non-parametric twin of
    :class:`~ferlib.openset.contrast.ContrastDetector`): no training, no label or pseudo
    label read, cosine similarity on L2-normalised features. Unlike :class:`KNN`, which asks
    "how far from training?", it asks "how crowded by other unknowns?", which keeps working
    where the open class lies close to a close class in feature space but forms its own
    cluster. It needs an evaluation set where open samples are not isolated singletons.
    Higher = more likely open.
    """

    name = "tknn"

    def __init__(self, k: int = 50, chunk: int = 1024):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k, self.chunk = k, chunk

    def __repr__(self) -> str:
        return f"TransductiveKNN(k={self.k})"

    def score(self, data):
        import torch

        def unit(x) -> torch.Tensor:
            x = torch.as_tensor(np.asarray(x, np.float32))
            return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)

        if data.train_features is None or len(data.train_features) == 0:
            raise ValueError("the tknn detector needs the close training features (OpenSetData.train_features)")
        q = unit(data.features)
        pool = torch.cat([q, unit(data.train_features)])
        from_eval = torch.zeros(len(pool))
        from_eval[: len(q)] = 1.0
        k = min(self.k, len(pool) - 1)
        out = np.empty(len(q), np.float32)
        for start in range(0, len(q), self.chunk):  # bounded memory: chunk x pool similarities
            sim = q[start:start + self.chunk] @ pool.T
            rows = torch.arange(sim.shape[0])
            sim[rows, start + rows] = -np.inf  # a sample is not its own neighbour
            idx = sim.topk(k, dim=1).indices
            out[start:start + len(rows)] = from_eval[idx].mean(dim=1).numpy()
        return out


#: post-hoc baselines by name (the paper's method lives in ferlib.openset.cycle)
DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (MaxSoftmax, MaxLogit, Energy, Entropy, Mahalanobis, KNN, TransductiveKNN)
}


def make_detector(name: str, **params) -> Detector:
    """Build a detector by name; the paper's method is ``"cycle"``."""
    if name == "cycle":
        from ferlib.openset.cycle import CycleConfig, CycleDetector

        return CycleDetector(CycleConfig(**params))
    if name == "contrast":
        from ferlib.openset.contrast import ContrastConfig, ContrastDetector

        return ContrastDetector(ContrastConfig(**params))
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose from {sorted(DETECTORS) + ['cycle', 'contrast']}")
    return DETECTORS[name](**params)
