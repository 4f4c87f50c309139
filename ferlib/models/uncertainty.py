"""``uncertainty``: a mean head and a log-variance head (Relative Uncertainty Learning).

RUL (Zhang et al., NeurIPS 2021; METHODS.md part 2) maps the trunk's feature map through
two branches *of the same shape*, ``BN2d(affine=False) -> Dropout(0.4) -> Linear(->D) ->
BN1d``: one gives a D-dimensional embedding ``mu``, the other its log-variance
``log sigma^2``. A linear classifier ``fc`` on ``mu`` gives the logits at inference; in
training the ``rul`` objective (:mod:`ferlib.losses.rul`) mixes pairs of embeddings
weighted by their relative uncertainty and classifies the mixture with the same ``fc``
(:meth:`UncertaintyHead.classify`).

``extras``: ``mu`` (B, D), ``log_var`` (B, D) and ``uncertainty`` (B,), the mean over the
D dimensions of ``exp(log_var)``: the paper's positive per-sample scalar, which the
``uncertainty`` open-set detector reads. ``features`` stay the pooled *trunk* features,
as for every head, because that is what feature-based detectors read.

Deviation from the paper, and why: the paper flattens the 512x7x7 map before the Linear,
which ties the head to one input size (224 px with the ImageNet stem) and makes a
class-activation map impossible. Here each branch takes the *spatial mean* before the
Linear. In eval mode BatchNorm (running statistics), Dropout (identity), the Linear and
``fc`` are all affine, so ``logits = A @ mean_hw(F) + c`` for a fixed matrix ``A`` and
vector ``c`` (:meth:`UncertaintyHead.effective_classifier`), and the map ``A @ F(h, w)``
is an exact CAM: its spatial mean plus ``c`` is the logit, as for the ``linear`` head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ferlib.models.base import Head, HeadOutput, check_positive_int

#: the paper's dropout inside both branches
PAPER_DROPOUT = 0.4


class _Embedding(nn.Module):
    """BN2d(affine=False) -> Dropout -> spatial mean -> Linear(C -> D) -> BN1d(D)."""

    def __init__(self, in_features: int, embedding: int, dropout: float):
        super().__init__()
        self.norm_map = nn.BatchNorm2d(in_features, affine=False)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_features, embedding)
        self.norm = nn.BatchNorm1d(embedding)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        pooled = self.dropout(self.norm_map(feature_map)).mean(dim=(2, 3))
        return self.norm(self.linear(pooled))

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(M, v)`` (D x C, D) with ``forward(F) == M @ mean_hw(F) + v`` in eval mode
        (BatchNorm with its running statistics, Dropout the identity)."""
        bn2, bn1 = self.norm_map, self.norm
        s2 = torch.rsqrt(bn2.running_var + bn2.eps)
        t2 = -bn2.running_mean * s2
        s1 = bn1.weight * torch.rsqrt(bn1.running_var + bn1.eps)
        t1 = bn1.bias - bn1.running_mean * s1
        matrix = s1[:, None] * self.linear.weight * s2[None, :]
        vector = s1 * (self.linear.weight @ t2 + self.linear.bias) + t1
        return matrix, vector


class UncertaintyHead(Head):
    """Mean and log-variance branches on the trunk's feature map, ``fc`` on the mean.

    Parameters
    ----------
    embedding : int
        Width D of the embedding ``mu`` and of ``log_var`` (the paper: 64).
    embedding_dropout : float
        Dropout inside both branches, on the normalised feature map (the paper: 0.4).
        The network-level ``dropout`` acts, as for the ``linear`` head, on ``fc``'s input.
    """

    name = "uncertainty"
    supports_cam = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dropout: float = 0.0,
        *,
        embedding: int = 64,
        embedding_dropout: float = PAPER_DROPOUT,
    ):
        super().__init__(in_features, num_classes, dropout)
        embedding = check_positive_int(self.name, "embedding", embedding)
        ok = isinstance(embedding_dropout, (int, float)) and not isinstance(embedding_dropout, bool)
        if not ok or not math.isfinite(embedding_dropout) or not 0.0 <= embedding_dropout < 1.0:
            raise ValueError(f"head {self.name!r}: embedding_dropout must be in [0, 1), got {embedding_dropout!r}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(embedding, num_classes)
        self.mu = _Embedding(in_features, embedding, float(embedding_dropout))
        self.log_var = _Embedding(in_features, embedding, float(embedding_dropout))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits of (B, D) embeddings: ``mu`` at inference, a mixture in the ``rul`` loss."""
        return self.fc(self.dropout(embedding))

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        mu = self.mu(feature_map)
        log_var = self.log_var(feature_map)
        extras = {"mu": mu, "log_var": log_var, "uncertainty": torch.exp(log_var).mean(dim=1)}
        return HeadOutput(self.classify(mu), feature_map.mean(dim=(2, 3)), extras)

    def effective_classifier(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, c)`` (K x C, K): in eval mode ``logits == A @ mean_hw(F) + c``, F the trunk's map."""
        matrix, vector = self.mu.affine()
        return self.fc.weight @ matrix, self.fc.weight @ vector + self.fc.bias

    def cam_bias(self) -> torch.Tensor:
        """The per-class constant ``c`` that :meth:`cam`'s spatial mean lacks to be the logit."""
        return self.effective_classifier()[1]

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Class-activation maps (B, K, h, w) ``A @ F(h, w)``, ``A`` detached.

        Exact in eval mode (spatial mean + :meth:`cam_bias` = logits). In training mode the
        head normalises with batch statistics and drops units at random, so no per-position
        map reproduces its logits; ``A`` then uses the running statistics, a fixed linear map
        of the features, which is what a flip-consistency loss compares. Detached, as the
        ``linear`` head's weights, so such a loss shapes the features, not the classifier.
        """
        matrix = self.effective_classifier()[0].detach()
        return torch.einsum("kc,bchw->bkhw", matrix, feature_map)
