"""``linear``: global average pooling and one linear classifier (the CAM head).

Keeping the classifier a single ``nn.Linear`` on average-pooled features is what makes
the class-activation map exact: ``M_k = sum_c W_kc F_c`` and ``mean(M_k) + b_k`` is the
logit (Zhou et al., CAM), which the ``cam_flip`` objective compares under a flip.
"""

from __future__ import annotations

import torch
from torch import nn

from ferlib.models.base import Head, HeadOutput


class LinearHead(Head):
    """GAP + (dropout) + Linear; ``features`` are the pooled trunk features."""

    name = "linear"
    supports_cam = True

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__(in_features, num_classes, dropout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        return HeadOutput(self.fc(self.dropout(pooled)), pooled)

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Class-activation maps (B, K, h, w) for every class; classifier weights detached.

        Detaching W (as the reference does) makes a consistency loss shape the features,
        not shrink the classifier towards zero.
        """
        return torch.einsum("kc,bchw->bkhw", self.fc.weight.detach(), feature_map)
