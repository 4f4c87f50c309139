"""``manet``: MA-Net's global branch and four-patch local attention branch, as a kit head.

MA-Net (Zhao et al., TIP 2021; the diversity method's second network, METHODS.md part 3)
runs two branches over a shared ResNet-18 stem: a *global* branch over the whole map and
a *local* branch that cuts the map into four quadrant patches, gives each patch its own
attention block (CBAM) and classifies the patches' pooled features together. The
diversity method pushes apart the four patches' spatial and channel attention and the two
branches' pooled features.

Here (B = batch, C = trunk channels, h x w = the trunk's final map):

- global branch: 1x1 conv block (conv, BN, ReLU, ``width`` channels) on the whole map,
  global average pooling, linear classifier;
- local branch: the map split into 2x2 quadrants (top-left, top-right, bottom-left,
  bottom-right, as the reference), each through its own 1x1 conv block and its own
  :class:`~ferlib.models.cbam.CBAM`, pooled; the local descriptor is the mean of the four
  pooled patches (what the reference computes by tiling the patch maps back together and
  average-pooling), then one linear classifier.

**Deviation from the reference.** MA-Net splits the *layer-2* map (28x28 at 224 px) and
gives each patch its own layer-3 and layer-4 (attention residual blocks), while its global
branch runs its own multi-scale layers 3-4. A kit head sees only the trunk's *final* map
(:class:`ferlib.models.base.Head`), so this head splits the final map and each patch gets
one 1x1 conv block and CBAM instead of two residual stages; the global branch is a plain
conv block instead of multi-scale blocks. The trunk's layers 3-4 are thus shared by both
branches, where MA-Net keeps them separate. The method's structure (global vs four
attended quadrants, the descriptors the diversity loss compares) is kept; its capacity is
not. A map of odd side is split into overlapping quadrants of side ``ceil(side / 2)`` (a
3x3 map gives four 2x2 patches sharing the middle row and column), so all patches have one
shape; a map with a side below 2 cannot be split and raises ``ValueError``.

Logits: ``(1 - local_weight) * global + local_weight * local``, the reference's inference
rule with the *same* weights as its loss (``beta = 0.6`` on the local patch branch's
``fc_1``; METHODS.md's "0.6 CE(global) + 0.4 CE(local)" has the two swapped against
the released code). ``branch_weights`` carries these two weights to the ``ensemble``
objective as its default loss weights.

Extras: ``branch_logits`` (B, 2, K) = [global, local]; ``branch_features`` (B, 2, width)
= [global, local] pooled descriptors; ``spatial_attention`` (B, 4, h', w') and
``channel_attention`` (B, 4, width) of the four patches. ``features`` stay the pooled trunk
features that the detectors read.

Class-activation maps are exact: the global branch contributes ``W_g G``; each patch
contributes ``W_l A_p`` on its own quadrant, scaled by ``h w / (4 h' w')`` so that the
full map's mean is the mean over patches of their spatial means (also where quadrants
overlap); weighted like the logits, the spatial mean plus the weighted bias is the logit.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.models.base import Head, HeadOutput, check_positive_int
from ferlib.models.cbam import CBAM

#: number of patches of the local branch (2 x 2 quadrants)
PATCHES = 4


def quadrant_slices(height: int, width: int) -> list[tuple[slice, slice]]:
    """(rows, cols) of the four quadrants of a ``height x width`` map, each of side
    ``ceil(side / 2)`` (overlapping by one row/column when the side is odd); in the order
    top-left, top-right, bottom-left, bottom-right."""
    if height < 2 or width < 2:
        raise ValueError(
            f"head 'manet' splits the trunk's final feature map into 2x2 quadrants, but the map is "
            f"{height}x{width}; use a larger input_size or a trunk that keeps more resolution "
            "(e.g. arch='smallface', or stem='small' for a ResNet)"
        )
    ph, pw = math.ceil(height / 2), math.ceil(width / 2)
    rows = (slice(0, ph), slice(height - ph, height))
    cols = (slice(0, pw), slice(width - pw, width))
    return [(r, c) for r in rows for c in cols]


def _block(in_features: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_features, width, kernel_size=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
    )


class MANetHead(Head):
    """Global branch + four attended quadrant patches; logits = weighted mean of the two.

    Parameters
    ----------
    width : int
        Channels of every branch's and patch's 1x1 conv block (the descriptors' size).
    local_weight : float
        Weight of the local (patch) branch in the logits and the default loss, in [0, 1]
        (the reference's ``beta = 0.6``); the global branch gets ``1 - local_weight``.
    reduction : int
        CBAM channel-MLP reduction ratio (16 in the reference).
    spatial_kernel : int
        Odd side of CBAM's spatial-attention conv (7; see :mod:`ferlib.models.cbam`).
    """

    name = "manet"
    supports_cam = True
    #: the attention extras are per *patch*, not per branch: ESR's progressive training does not apply
    per_branch_attention: ClassVar[bool] = False

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        dropout: float = 0.0,
        *,
        width: int = 256,
        local_weight: float = 0.6,
        reduction: int = 16,
        spatial_kernel: int = 7,
    ):
        super().__init__(in_features, num_classes, dropout)
        width = check_positive_int(self.name, "width", width)
        reduction = check_positive_int(self.name, "reduction", reduction)
        spatial_kernel = check_positive_int(self.name, "spatial_kernel", spatial_kernel)
        if spatial_kernel % 2 == 0:
            raise ValueError(f"head {self.name!r}: spatial_kernel must be odd, got {spatial_kernel}")
        if (
            isinstance(local_weight, bool)
            or not isinstance(local_weight, (int, float))
            or not 0.0 <= local_weight <= 1.0
        ):
            raise ValueError(f"head {self.name!r}: local_weight must be a number in [0, 1], got {local_weight!r}")
        self.local_weight = float(local_weight)
        #: [global, local] weights of the logits; the ``ensemble`` objective's default loss weights
        self.branch_weights = (1.0 - self.local_weight, self.local_weight)
        self.global_block = _block(in_features, width)
        self.patch_blocks = nn.ModuleList(_block(in_features, width) for _ in range(PATCHES))
        self.patch_attention = nn.ModuleList(CBAM(width, reduction, spatial_kernel) for _ in range(PATCHES))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.global_fc = nn.Linear(width, num_classes)
        self.local_fc = nn.Linear(width, num_classes)

    def _patches(self, feature_map: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(attended map, channel attention, spatial attention) of each quadrant."""
        slices = quadrant_slices(*feature_map.shape[-2:])
        return [
            attention(block(feature_map[:, :, rows, cols]))
            for (rows, cols), block, attention in zip(slices, self.patch_blocks, self.patch_attention)
        ]

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:
        pooled = feature_map.mean(dim=(2, 3))
        patches = self._patches(feature_map)
        global_desc = self.global_block(feature_map).mean(dim=(2, 3))
        local_desc = torch.stack([attended.mean(dim=(2, 3)) for attended, _, _ in patches]).mean(dim=0)
        branch_logits = torch.stack(
            [self.global_fc(self.dropout(global_desc)), self.local_fc(self.dropout(local_desc))], dim=1
        )
        w_global, w_local = self.branch_weights
        extras = {
            "branch_logits": branch_logits,
            "branch_features": torch.stack([global_desc, local_desc], dim=1),
            "spatial_attention": torch.stack([spatial for _, _, spatial in patches], dim=1),
            "channel_attention": torch.stack([channel for _, channel, _ in patches], dim=1),
        }
        return HeadOutput(w_global * branch_logits[:, 0] + w_local * branch_logits[:, 1], pooled, extras)

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) maps whose spatial mean plus ``w_g b_g + w_l b_l`` is the logit (eval
        mode); classifier weights detached (see the module docstring)."""
        height, width = feature_map.shape[-2:]
        w_global, w_local = self.branch_weights
        global_map = torch.einsum("kc,bchw->bkhw", self.global_fc.weight.detach(), self.global_block(feature_map))
        local_map = torch.zeros_like(global_map)
        for (rows, cols), (attended, _, _) in zip(quadrant_slices(height, width), self._patches(feature_map)):
            scale = height * width / (PATCHES * attended.shape[-2] * attended.shape[-1])
            patch_map = torch.einsum("kc,bchw->bkhw", self.local_fc.weight.detach(), attended)
            placed = F.pad(patch_map, (cols.start, width - cols.stop, rows.start, height - rows.stop))
            local_map = local_map + scale * placed
        return w_global * global_map + w_local * local_map

    def cam_bias(self) -> torch.Tensor:
        """The (K,) bias that completes :meth:`cam`'s spatial mean to the logits."""
        w_global, w_local = self.branch_weights
        return w_global * self.global_fc.bias + w_local * self.local_fc.bias
