"""``uncertainty``: a mean head and a log-variance head (Relative Uncertainty Learning).

RUL (Zhang et al., NeurIPS 2021) learns, beside the classifier, one uncertainty value
per sample from the pooled features; its loss mixes pairs of samples weighted by their
relative uncertainty. This head provides the interface that loss needs: the logits come
from the mean head (a linear classifier on the pooled features, so CAM stays exact), and
``extras`` carry ``log_var`` (B,) and ``sigma = exp(log_var / 2)`` (B,). The mixup /
add-up objective itself is a separate loss (``ferlib.losses``), not part of the head.
"""

from __future__ import annotations

import torch
from torch import nn

from ferlib.models.base import HeadOutput, check_positive_int
from ferlib.models.linear import LinearHead


class UncertaintyHead(LinearHead):
    """Linear mean head (``fc``) plus an MLP log-variance head on the pooled features.

    Parameters
    ----------
    hidden : int
        Width of the log-variance MLP's hidden layer (Linear -> ReLU -> Linear(1)).
    """

    name = "uncertainty"
    supports_cam = True

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0, *, hidden: int = 128):
        super().__init__(in_features, num_classes, dropout)
        hidden = check_positive_int(self.name, "hidden", hidden)
        self.log_var = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        out = super().forward(feature_map)
        log_var = self.log_var(out.features).squeeze(1)
        out.extras = {"log_var": log_var, "sigma": torch.exp(0.5 * log_var)}
        return out
