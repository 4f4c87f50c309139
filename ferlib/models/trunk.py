"""Trunks: the feature extractors a head sits on.

Two families: torchvision ResNet-18/50 (for users with face-pretrained weights) and
``smallface``, a network built for 40-64 px faces trained from scratch. Why a second stem:
torchvision's ImageNet stem (7x7 stride-2 conv + max-pool) divides the input by 32, so a
48-px FERPlus face ends as a 2x2 map, too coarse for the attention maps that the open-set
method compares under a flip. The ``small`` stem (3x3 stride-1 conv + max-pool) divides by
16: 48 px gives 3x3, 112 px gives the 7x7 map the paper gets at 224.

A new backbone is a :class:`Trunk` subclass and one line in :data:`TRUNKS`; heads only
see ``out_channels`` and the feature map.
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
    """Images (B, 3, S, S) -> last feature map (B, out_channels, h, w).

    A trunk is a sequence of stages (:meth:`stages`); :meth:`forward_until` and
    :meth:`forward_from` split it between two of them, so that a method can mix or perturb
    an intermediate map (PROSER's manifold mixup, :mod:`ferlib.losses.proser`):
    ``forward_from(forward_until(x, k), k)`` is ``forward(x)`` for every ``k`` in
    ``0..num_stages``.
    """

    out_channels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self) -> list[nn.Module]:
        """The trunk's stages in order (their composition is :meth:`forward`)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its stages")

    @property
    def num_stages(self) -> int:
        return len(self.stages())

    def forward_until(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """The map entering stage ``stage`` (0: the input itself; ``num_stages``: the output)."""
        for module in self.stages()[:stage]:
            x = module(x)
        return x

    def forward_from(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """The trunk's output from the map ``h`` entering stage ``stage``."""
        for module in self.stages()[stage:]:
            h = module(h)
        return h

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output map, in order (the last is :meth:`forward`'s output)."""
        maps = []
        for module in self.stages():
            x = module(x)
            maps.append(x)
        return maps


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

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    """3x3 conv (no bias: BatchNorm follows), optional 2x2 max-pool, BatchNorm, GELU.

    Pooling sits *before* BatchNorm and GELU (as in airbench): the same function, a
    quarter of the normalisation and activation work."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(cout), nn.GELU()]


class SmallFaceTrunk(Trunk):
    """``smallface``: a narrow VGG-style network for 40-64 px faces trained from scratch.

    Design and why:

    - Resolution is kept where faces need it. A ResNet's stem and four stages divide
      the input by 16-32; here a stride-1 stem and three pooling blocks divide by 8, so a
      48-px face ends as a **6x6** map (64 px: 8x8, 40 px: 5x5). That map is what the
      ``linear`` head pools and what its class-activation maps are made of, so the
      ``cam_flip`` consistency loss has 36 positions to compare, not ResNet-18's 3x3.
    - Few, wide-ish blocks (stem 32, then 64, 128, 256 channels; 7 conv layers, about
      1.2 M parameters, about 0.19 GMAC per 48-px image against ResNet-18's 0.33 GMAC
      with the small stem and 11 M parameters): the size of Microsoft's FERPlus VGG-13
      baseline's early layers and of the CIFAR-10 speed-run networks (airbench,
      hlb-CIFAR10), which show that such a net trains to high accuracy in few epochs on
      32-px images. Fewer parameters also means less to overfit on 28k faces.
    - Every conv is followed by BatchNorm (fast, stable training at high learning rates,
      with SGD-Nesterov or Adam) and GELU; max-pooling, not strided convs, to downsample
      (cheap and shift-tolerant on aligned crops).
    - No residual connections: at this depth they buy little and cost memory traffic.

    Input is the kit's 3-channel float batch (grayscale faces repeated).
    """

    #: channels of the stem and of the three pooling blocks
    WIDTHS: tuple[int, int, int, int] = (32, 64, 128, 256)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        w0, w1, w2, w3 = self.WIDTHS
        self.stem = nn.Sequential(*_conv_bn(3, w0, pool=False))
        self.block1 = nn.Sequential(*_conv_bn(w0, w1, pool=True), *_conv_bn(w1, w1, pool=False))
        self.block2 = nn.Sequential(*_conv_bn(w1, w2, pool=True), *_conv_bn(w2, w2, pool=False))
        self.block3 = nn.Sequential(*_conv_bn(w2, w3, pool=True), *_conv_bn(w3, w3, pool=False))
        self.out_channels = w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(self.stem(x))))

    def stages(self) -> list[nn.Module]:
        return [self.stem, self.block1, self.block2, self.block3]


class SmallFaceWideTrunk(SmallFaceTrunk):
    """``smallface_wide``: :class:`SmallFaceTrunk` at twice the width (stem 64, then 128,
    256, 512 channels; about 4.7 M parameters, 4x the multiply-adds).

    Why: on a GPU the narrow net is bound by launch overhead, not arithmetic, so a wider one
    costs little extra time per epoch; with geometric augmentation holding overfitting back
    the extra capacity can be used (Microsoft's FERPlus VGG-13 is 8.8 M parameters). Same
    6x6 map at 48 px, so CAMs and the consistency loss work as for ``smallface``.
    """

    WIDTHS = (64, 128, 256, 512)


class SmallFaceDeepTrunk(SmallFaceTrunk):
    """``smallface_deep``: :class:`SmallFaceTrunk` with a third 3x3 conv in its two coarsest
    blocks (9 conv layers, about 2.0 M parameters, about 20% more multiply-adds at 48 px).

    Why depth there: Microsoft's FERPlus VGG-13 (about .85 test from scratch) stacks three
    convs at its two coarsest resolutions; widening ``smallface`` did not raise validation
    accuracy on FERPlus (docs/journal/time_to_accuracy.md, "Time to accuracy on the H200"), and extra layers
    at 12x12 and 6x6 cost little because the maps are small. Same widths and the same 6x6
    map at 48 px, so CAMs and the consistency loss work as for ``smallface``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        _, _, w2, w3 = self.WIDTHS
        self.block2.extend(_conv_bn(w2, w2, pool=False))
        self.block3.extend(_conv_bn(w3, w3, pool=False))


def _dlibface(cfg: ModelConfig) -> Trunk:
    from ferlib.models.dlibface import DlibFaceTrunk  # imports this module: imported when built

    return DlibFaceTrunk(cfg)


def _dlibface_l1(cfg: ModelConfig) -> Trunk:
    from ferlib.models.dlibface import DlibFaceL1Trunk

    return DlibFaceL1Trunk(cfg)


#: arch name -> trunk class (built from the ModelConfig)
TRUNKS: dict[str, Callable[[ModelConfig], Trunk]] = {
    **{name: ResNetTrunk for name in ARCHS},
    "smallface": SmallFaceTrunk,
    "smallface_wide": SmallFaceWideTrunk,
    "smallface_deep": SmallFaceDeepTrunk,
    "dlibface": _dlibface,  # dlib's face-recognition ResNet (ferlib/models/dlibface.py), pretrained="dlibface"
    "dlibface_l1": _dlibface_l1,  # the same without its last down block: a 3x3 map at 112 px
}


def build_trunk(cfg: ModelConfig) -> Trunk:
    """The trunk named by ``cfg.arch``; a ValueError names the choices."""
    if cfg.arch not in TRUNKS:
        raise ValueError(f"arch must be one of {sorted(TRUNKS)}, got {cfg.arch!r}")
    if not 32 <= cfg.input_size <= 256:
        raise ValueError(f"input_size must be in 32..256 px, got {cfg.input_size}")
    return TRUNKS[cfg.arch](cfg)
