"""Trunks: the feature extractors a head sits on.

Today: torchvision ResNet-18/50 with a stem for small faces. Why a second stem:
torchvision's ImageNet stem (7x7 stride-2 conv + max-pool) divides the input by 32, so a
48-px FERPlus face ends as a 2x2 map, too coarse for the attention maps that the open-set
method compares under a flip. The ``small`` stem (3x3 stride-1 conv + max-pool) divides by
16: 48 px gives 3x3, 112 px gives the 7x7 map the paper gets at 224.

A new backbone (e.g. a small-face network) is a :class:`Trunk` subclass and one line in
:data:`TRUNKS`; heads only see ``out_channels`` and the feature map.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from ferlib.models.base import ModelConfig

#: torchvision factory and output width of each ResNet
ARCHS: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "resnet18": (tvm.resnet18, 512),
    "resnet50": (tvm.resnet50, 2048),
}


class Trunk(nn.Module):
    """Images (B, 3, S, S) -> last feature map (B, out_channels, h, w)."""

    out_channels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class ResNetTrunk(Trunk):
    """A torchvision ResNet without its pooling and classifier, stem chosen by input size.

    Submodule names (``stem``, ``layer1``..``layer4``) follow torchvision's so that face
    recognition checkpoints map onto them (:func:`ferlib.models.weights.load_pretrained`).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        factory, width = ARCHS[cfg.arch]
        net = factory(weights=None)
        if cfg.resolved_stem() == "small":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2 = net.layer1, net.layer2
        self.layer3, self.layer4 = net.layer3, net.layer4
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


#: arch name -> trunk class (built from the ModelConfig)
TRUNKS: dict[str, Callable[[ModelConfig], Trunk]] = {name: ResNetTrunk for name in ARCHS}


def build_trunk(cfg: ModelConfig) -> Trunk:
    """The trunk named by ``cfg.arch``; a ValueError names the choices."""
    if cfg.arch not in TRUNKS:
        raise ValueError(f"arch must be one of {sorted(TRUNKS)}, got {cfg.arch!r}")
    if not 32 <= cfg.input_size <= 256:
        raise ValueError(f"input_size must be in 32..256 px, got {cfg.input_size}")
    return TRUNKS[cfg.arch](cfg)
