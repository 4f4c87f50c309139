"""Transductive k-NN: how crowded by other evaluation samples is each evaluation sample?"""

from __future__ import annotations

import numpy as np

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData


class TransductiveKNN(Detector):
    """Share of evaluation samples among each evaluation sample's k nearest neighbours in the
    pooled (evaluation + close training) features of the close-set model, itself excluded.

    Why. The paper's setting is transductive: the whole evaluation set is at hand. Its open
    samples form a population that the close training set lacks, so their neighbourhoods
    are made of other evaluation samples, while a close test sample sits among training
    samples of its class in proportion to the two sets' sizes. The score is a k-NN estimate
    of p(evaluation set | x), a density ratio (the non-parametric twin of
    :class:`~ferlib.openset.contrast.ContrastDetector`): no training, no label or pseudo
    label read, cosine similarity on L2-normalised features. Unlike :class:`~ferlib.openset.posthoc.KNN`, which asks
    "how far from training?", it asks "how crowded by other unknowns?", which keeps working
    where the open class lies close to a close class in feature space but forms its own
    cluster. It needs an evaluation set where open samples are not isolated singletons.
    Higher = more likely open.
    """

    name = "tknn"
    reads_model_outputs = True

    def __init__(self, k: int = 50, chunk: int = 1024):
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self.k, self.chunk = k, chunk

    def __repr__(self) -> str:
        return f"TransductiveKNN(k={self.k})"

    def score(self, data: OpenSetData) -> np.ndarray:
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
            sim = q[start : start + self.chunk] @ pool.T
            rows = torch.arange(sim.shape[0])
            sim[rows, start + rows] = -np.inf  # a sample is not its own neighbour
            idx = sim.topk(k, dim=1).indices
            out[start : start + len(rows)] = from_eval[idx].mean(dim=1).numpy()
        return out
