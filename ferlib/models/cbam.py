"""CBAM, the convolutional block attention module (Woo et al., ECCV 2018), returning its maps.

The diversity method (METHODS.md part 3) ends every ESR branch and every MA-Net patch with
a CBAM block and pushes the blocks' *attention* apart, so the block must hand its two maps
to the loss instead of keeping them inside: :meth:`CBAM.forward` returns the refined
feature map together with the channel attention (B, C) and the spatial attention (B, h, w).

Standard CBAM, in its order: channel attention ``sigmoid(MLP(avgpool x) + MLP(maxpool x))``
from a shared MLP with a ``reduction`` bottleneck, then spatial attention
``sigmoid(conv_k([mean_c x'; max_c x']))`` on the channel-refined map, each multiplied in.
Following the paper's equation the spatial conv has a bias and no BatchNorm (the authors'
code adds a BatchNorm there).

Kernel size on small maps: with ``k // 2`` zero padding, a tap further than ``s - 1`` from
the centre of a map of side ``s`` only ever multiplies padding, so on the kit's small maps
(3x3 for ResNet-18 at 48 px, 2x2 patches) the 7x7 conv computes exactly what its central
``(2s - 1) x (2s - 1)`` part would; the outer taps just never train. ``kernel_size`` is
therefore left at the paper's 7 by default and is a head parameter for those who want
fewer parameters.
"""

from __future__ import annotations

import torch
from torch import nn


class CBAM(nn.Module):
    """Channel then spatial attention; ``forward(x) -> (refined, channel (B, C), spatial (B, h, w))``.

    Parameters
    ----------
    channels : int
        Channels of the map it refines.
    reduction : int
        Bottleneck ratio of the shared channel MLP (hidden width ``max(1, channels // reduction)``).
    kernel_size : int
        Odd side of the spatial-attention conv (7 in the paper).
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CBAM kernel_size must be a positive odd integer, got {kernel_size}")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
        spatial = torch.sigmoid(self.spatial(pooled))[:, 0]
        return x * spatial[:, None], channel, spatial
