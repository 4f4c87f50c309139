"""``branches``: B parallel branches on the shared trunk, each ending in CBAM (ESR-style).

ESR (Siqueira et al., AAAI 2020) shares a base network and trains several branches on
its feature maps; the diversity method (Heidari & Iosifidis, METHODS.md part 3) ends each
branch with a CBAM block and pushes the branches' attention apart. Here each branch is a
1x1 conv block (conv, BN, ReLU) on the trunk's feature map, a :class:`~ferlib.models.cbam.CBAM`
block (``attention=True``), global average pooling and a linear classifier.

Outputs: ``extras["branch_logits"]`` (B, branches, K); with attention also
``extras["spatial_attention"]`` (B, branches, h, w) and ``extras["channel_attention"]``
(B, branches, width), the descriptors the ``ensemble`` objective's diversity term reads.
``features`` stay the pooled *trunk* features (shared by every branch), which is what
feature-based detectors read.

Combining the branches (``combine``):

- ``"mean"`` (default): logits = mean of the branch logits. Differentiable, keeps CAM
  exact, and gives calibrated-looking scores to the detectors that read logits.
- ``"vote"``: ESR's prediction, the plurality vote of the branches. As logits it returns
  ``log((votes + p_mean) / (branches + 1))``: the softmax of these is each class's vote share
  with the branches' mean probability counted as one extra, soft voter, so the argmax is the
  plurality vote with ties broken by the mean probability (a vote margin of one always
  beats a probability margin below one). Meant for inference and ablations; the votes carry
  no gradient and the class-activation maps no longer pool to these logits, so the head
  then reports ``supports_cam = False``.

Differences from ESR: ESR's branches are four conv layers deep on a 96-px base; the kit's
branches are one 1x1 conv block on whatever trunk is chosen (the trunk is shared, as ESR's
base). ESR adds branches one at a time during training: that is the ``ensemble``
objective's ``progressive_epochs``, not a property of the head.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.models.base import Head, HeadOutput, check_positive_int
from ferlib.models.cbam import CBAM

COMBINES = ("mean", "vote")


class _Branch(nn.Module):
    def __init__(self, in_features: int, width: int, num_classes: int, dropout: float, attention: CBAM | None) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_features, width, kernel_size=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        if attention is not None:  # only registered with attention: attention=False keeps the old keys
            self.cbam = attention
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, num_classes)

    def maps(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(attended map (B, width, h, w), channel attention or None, spatial attention or None)."""
        x = self.block(feature_map)
        if hasattr(self, "cbam"):
            return self.cbam(x)
        return x, None, None


def vote_logits(branch_logits: torch.Tensor) -> torch.Tensor:
    """(B, K) log vote shares of (B, branches, K) logits; the mean probability is one extra,
    soft voter that breaks ties (see the module docstring)."""
    n, k = branch_logits.shape[1], branch_logits.shape[2]
    votes = F.one_hot(branch_logits.argmax(dim=2), k).sum(dim=1).to(branch_logits.dtype)
    soft = branch_logits.softmax(dim=2).mean(dim=1)
    return torch.log((votes + soft) / (n + 1))


class BranchesHead(Head):
    """``branches`` parallel conv branches with CBAM; logits = mean (or vote) of the branches.

    Parameters
    ----------
    branches : int
        Number of parallel branches (ESR uses up to 9).
    width : int
        Channels of each branch's 1x1 conv block.
    attention : bool
        End each branch with a CBAM block (the diversity method's ESR); False gives the plain
        branches of before (same state-dict keys) and no attention extras.
    reduction : int
        CBAM channel-MLP reduction ratio (16 in CBAM and the reference).
    spatial_kernel : int
        Odd side of CBAM's spatial-attention conv (7; see :mod:`ferlib.models.cbam` on small maps).
    combine : str
        ``"mean"`` of the branch logits or ESR's ``"vote"`` (see the module docstring).
    """

    name = "branches"
    supports_cam = True
    #: the attention extras have one row per branch (what ESR's progressive training needs)
    per_branch_attention: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dropout: float = 0.0,
        *,
        branches: int = 4,
        width: int = 256,
        attention: bool = True,
        reduction: int = 16,
        spatial_kernel: int = 7,
        combine: str = "mean",
    ):
        super().__init__(in_features, num_classes, dropout)
        branches = check_positive_int(self.name, "branches", branches)
        width = check_positive_int(self.name, "width", width)
        reduction = check_positive_int(self.name, "reduction", reduction)
        spatial_kernel = check_positive_int(self.name, "spatial_kernel", spatial_kernel)
        if spatial_kernel % 2 == 0:
            raise ValueError(f"head {self.name!r}: spatial_kernel must be odd, got {spatial_kernel}")
        if not isinstance(attention, bool):
            raise ValueError(f"head {self.name!r}: attention must be True or False, got {attention!r}")
        if combine not in COMBINES:
            raise ValueError(f"head {self.name!r}: combine must be one of {list(COMBINES)}, got {combine!r}")
        self.combine = combine
        self.supports_cam = combine == "mean"  # the votes are not a spatial mean of anything
        #: weights of the inference mean, one per branch; the ``ensemble`` objective's default loss weights
        self.branch_weights = tuple([1.0 / branches] * branches)
        self.branches = nn.ModuleList(
            _Branch(
                in_features,
                width,
                num_classes,
                dropout,
                CBAM(width, reduction, spatial_kernel) if attention else None,
            )
            for _ in range(branches)
        )

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        logits, channels, spatials = [], [], []
        for branch in self.branches:
            attended, channel, spatial = branch.maps(feature_map)
            logits.append(branch.fc(branch.dropout(attended.mean(dim=(2, 3)))))
            channels.append(channel)
            spatials.append(spatial)
        branch_logits = torch.stack(logits, dim=1)
        extras = {"branch_logits": branch_logits}
        if channels[0] is not None:
            extras["spatial_attention"] = torch.stack(spatials, dim=1)
            extras["channel_attention"] = torch.stack(channels, dim=1)
        combined = branch_logits.mean(dim=1) if self.combine == "mean" else vote_logits(branch_logits)
        return HeadOutput(combined, pooled, extras)

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Mean over branches of each branch's CAM on its own *attended* map, weights detached.

        Exact in eval mode for ``combine="mean"``: the logit of a branch is ``W mean(A) + b``
        for its attended map ``A``, so the spatial mean of ``W A`` plus the mean bias is the
        mean of the branch logits (dropout, the only difference in training, sits after the
        pooling)."""
        maps = [torch.einsum("kc,bchw->bkhw", b.fc.weight.detach(), b.maps(feature_map)[0]) for b in self.branches]
        return torch.stack(maps).mean(dim=0)
