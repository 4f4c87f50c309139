"""A small MLP as the binary head on frozen features: close training rows against candidates.

Why. The binary heads of SAL and WOODS are networks; the kit's first head
(:func:`ferlib.openset.binary_head.logistic_head`) is linear, for speed. On FERPlus's pooled
features of the 32 px close-set model the open class is not linearly separated from the close
ones: trained on the *true* open rows (``tools/head_ceiling.py``), the MLP reaches a higher
AUROC than the linear head (docs/journal/openset_ferplus_tuning.md, "The binary head's ceiling"), so it raises the
ceiling that pseudo-outlier training can approach. One hidden layer, a few epochs and weight decay keep it
from memorising the (noisy) candidates; it trains in seconds on a CPU.

``members`` > 1 trains that many MLPs, each from its own initial weights and batch order, and
averages their probabilities (a bagging-free ensemble). Why: the head learns from *noisy* labels
(pseudo-outliers, most of them close rows on some classes); nets started apart fit that noise
differently and agree on what the candidates share, so their mean ranks the rows with less
variance than any one of them, as ERD's and deep ensembles' members do.

Inputs arrive standardised (the caller fits the scaler on the same rows). Classes are weighted
to balance, as ``class_weight="balanced"`` does for the logistic head. Seeded: initial weights
and batch order come from ``seed`` alone, so the scores are reproducible on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MLPBinaryHead"]

#: member m starts from seed + m * this: far from the fold seeds (seed + fold) of the cross-fitting
_MEMBER_SEED_STRIDE = 100_003


@dataclass
class MLPBinaryHead:
    """``fit(x, y)`` / ``predict_proba(x)`` like a scikit-learn classifier (y in {0, 1}).

    ``hidden``: width of the one hidden layer; ``epochs``, ``batch_size``, ``lr``,
    ``weight_decay``: AdamW on the class-balanced binary cross-entropy; ``min_steps``: at
    least this many updates, adding epochs when the rows are few (5 epochs of a few thousand
    synthetic rows are a few dozen updates and leave the head untrained; a FERPlus head has
    at least 17,922 training rows, 180 or more updates in 5 epochs, so the guard does not
    change the FERPlus numbers); ``members``: MLPs averaged (1: one, the kit's earlier head,
    whose scores it keeps to the last digit). Common choices, except
    ``epochs``: 5, chosen among 5 / 10 / 20 on FERPlus's tuning set (never the reported set)
    with ``tools/sensitivity.py`` (docs/journal/openset_ferplus_tuning.md, "The binary head's ceiling")."""

    hidden: int = 256
    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-3
    min_steps: int = 150
    seed: int = 0
    members: int = 1

    def __post_init__(self) -> None:
        if int(self.min_steps) < 0:
            raise ValueError(f"min_steps must be non-negative, got {self.min_steps}")
        for name in ("hidden", "epochs", "batch_size", "members"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")

    def fit(self, x: np.ndarray, y: np.ndarray) -> MLPBinaryHead:
        import torch

        x_t = torch.as_tensor(np.asarray(x, np.float32))
        y_t = torch.as_tensor(np.asarray(y, np.float32))
        n_pos, n = float(y_t.sum()), len(y_t)
        if not 0 < n_pos < n:
            raise ValueError(f"the binary head needs rows of both classes, got {int(n_pos)} of {n} positive")
        # balanced weights: each class carries half the loss, as class_weight="balanced"
        weight = torch.where(y_t > 0.5, n / (2 * n_pos), n / (2 * (n - n_pos)))
        self.nets_ = [self._fit_one(x_t, y_t, weight, self.seed + _MEMBER_SEED_STRIDE * m) for m in range(self.members)]
        return self

    def _fit_one(self, x_t, y_t, weight, seed: int):
        """One MLP from ``seed``'s initial weights and batch order."""
        import torch
        import torch.nn.functional as F

        n = len(y_t)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = torch.nn.Sequential(
                torch.nn.Linear(x_t.shape[1], self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, 1)
            )
        order = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        net.train()
        batches = -(-n // self.batch_size)
        for _ in range(max(self.epochs, -(-self.min_steps // batches))):
            perm = torch.randperm(n, generator=order)
            for start in range(0, n, self.batch_size):
                i = perm[start : start + self.batch_size]
                logit = net(x_t[i]).squeeze(1)
                loss = (F.binary_cross_entropy_with_logits(logit, y_t[i], reduction="none") * weight[i]).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return net

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(n, 2)``: P(close), P(candidate) per row."""
        import torch

        if not hasattr(self, "nets_"):
            raise RuntimeError("MLPBinaryHead.predict_proba before fit")
        x_t = torch.as_tensor(np.asarray(x, np.float32))
        with torch.no_grad():
            probs = []
            for net in self.nets_:
                net.eval()
                probs.append(torch.sigmoid(net(x_t).squeeze(1)).numpy())
        p = probs[0] if len(probs) == 1 else np.mean(np.stack(probs).astype(np.float64), axis=0)
        return np.stack([1.0 - p, p], axis=1).astype(np.float64)
