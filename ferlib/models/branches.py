"""``branches``: B parallel branches on the shared trunk (branch ensembles, ESR-style).

ESR (Siqueira et al., AAAI 2020) shares a base network and trains several branches on
its feature maps; their average vote is the prediction and their disagreement is a
signal of its own. Here each branch is a 1x1 conv block (conv, BN, ReLU) on the trunk's
feature map, global average pooling and a linear classifier; ``logits`` are the mean of
the branch logits and ``extras["branch_logits"]`` is (B, branches, K). The CBAM
attention of ESR's branches and the diversity loss arrive later behind this interface.
``features`` stay the pooled *trunk* features (shared by every branch), which is what
feature-based detectors read.
"""

from __future__ import annotations

import torch
from torch import nn

from ferlib.models.base import Head, HeadOutput, check_positive_int


class _Branch(nn.Module):
    def __init__(self, in_features: int, width: int, num_classes: int, dropout: float):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_features, width, kernel_size=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)


class BranchesHead(Head):
    """``branches`` parallel conv branches; logits = mean of the branch logits.

    Parameters
    ----------
    branches : int
        Number of parallel branches (ESR uses up to 9).
    width : int
        Channels of each branch's 1x1 conv block.
    """

    name = "branches"
    supports_cam = True

    def __init__(
        self, in_features: int, num_classes: int, dropout: float = 0.0, *, branches: int = 4, width: int = 256
    ):
        super().__init__(in_features, num_classes, dropout)
        branches = check_positive_int(self.name, "branches", branches)
        width = check_positive_int(self.name, "width", width)
        self.branches = nn.ModuleList(_Branch(in_features, width, num_classes, dropout) for _ in range(branches))

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        branch_logits = torch.stack(
            [b.fc(b.dropout(b.block(feature_map).mean(dim=(2, 3)))) for b in self.branches], dim=1
        )
        return HeadOutput(branch_logits.mean(dim=1), pooled, {"branch_logits": branch_logits})

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Mean over branches of each branch's CAM on its own block output (exact in eval
        mode: the spatial mean plus the mean bias is the logit); weights detached."""
        maps = [torch.einsum("kc,bchw->bkhw", b.fc.weight.detach(), b.block(feature_map)) for b in self.branches]
        return torch.stack(maps).mean(dim=0)
