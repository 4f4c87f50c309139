"""``dlibface``: dlib's face-recognition ResNet as a trunk, to start from face weights.

The network is exactly dlib's (``examples/dnn_face_recognition_ex.cpp``; its structure,
read from the file, in :data:`ferlib.models.dlib_reader.FORWARD`):

- stem: 7x7 stride-2 conv (32 filters, **no padding**), ``affine``, ReLU, 3x3 stride-2
  max-pool (no padding);
- residual levels, input side first: 3 blocks of 32; a down block to 64 + 3 of 64; down to
  128 + 2 of 128; down to 256 + 2 of 256; one down block of 256 (``alevel4`` .. ``alevel0``).
  A block is conv 3x3 -> affine -> ReLU -> conv 3x3 -> affine, added to its input, then ReLU.
  A down block's first conv has stride 2 and no padding; its shortcut is a parameter-free 2x2
  average pool. dlib's add **zero-pads the smaller tensor to the larger shape** in channels and
  space, aligned top-left: at 112 px a 12x12 main path meets a 13x13 shortcut, and the sum is
  13x13. A faithful copy keeps these quirks, or the face weights compute something else.
- ``affine`` is batch norm folded into a per-channel scale and shift: it does not normalise,
  which is why this trunk is meant to start from its face weights (``pretrained="dlibface"``);
  re-initialised, it diverged in the first fine-tuning trials. ``freeze_norm`` in a recipe
  holds the scale and shift fixed.

The kit's batches are normalised with ImageNet's mean and std (:func:`ferlib.data.augment.to_float`);
the stem first maps them back to what dlib's network reads (RGB 0..255 minus dlib's means,
divided by 256), a fixed per-channel scale and shift. Grayscale faces arrive as three equal
channels. The trunk's last map is 256 channels; its side is 1 at 103-126 px, 2 at 127-158 px
(150 px: the size dlib trained on) and 3 at 159-190 px. ``dlibface_l1`` stops before the last
down block (``alevel0``), keeping a 3x3 map at 112 px and 4x4 at 150 px for attention maps
(CAM), at the cost of that block's 1.2 M pretrained parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferlib.data.augment import IMAGENET_MEAN, IMAGENET_STD
from ferlib.models.base import ModelConfig
from ferlib.models.dlib_reader import DLIB_INPUT_DIVISOR, DLIB_MEAN_RGB, LEVELS, DlibFaceModel
from ferlib.models.trunk import Trunk


class Affine(nn.Module):
    """dlib's ``affine_`` layer: ``x * scale + shift`` per channel (batch norm with its
    statistics folded in; no running statistics, the same in training and evaluation)."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1).to(x.dtype) + self.shift.view(1, -1, 1, 1).to(x.dtype)


def padded_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: ``a + b`` where the smaller is zero-padded (channels, rows, columns)
    to the larger shape, aligned at the first channel and the top-left pixel."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class DlibBlock(nn.Module):
    """``ares`` (``down=False``) or ``ares_down``: conv-affine-ReLU-conv-affine, added to the
    input (down: to its 2x2 average pool), then ReLU."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        stride = 2 if down else 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=0 if down else 1)
        self.affine1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.affine2 = Affine(cout)
        self.shortcut = nn.AvgPool2d(2, 2) if down else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(padded_add(y, self.shortcut(x)))


class DlibStem(nn.Module):
    """Kit normalisation -> dlib's input, then conv 7x7/2 (no padding), affine, ReLU, max-pool 3x3/2."""

    def __init__(self):
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN)
        std = torch.tensor(IMAGENET_STD)
        dlib_mean = torch.tensor(DLIB_MEAN_RGB)
        # x_kit = (v / 255 - mean) / std  =>  v = (x_kit * std + mean) * 255;  x_dlib = (v - dlib_mean) / 256
        self.register_buffer("in_scale", (std * 255 / DLIB_INPUT_DIVISOR).view(1, 3, 1, 1), persistent=False)
        self.register_buffer(
            "in_shift", ((mean * 255 - dlib_mean) / DLIB_INPUT_DIVISOR).view(1, 3, 1, 1), persistent=False
        )
        self.conv = nn.Conv2d(3, 32, 7, stride=2, padding=0)
        self.affine = Affine(32)
        self.pool = nn.MaxPool2d(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)
        return self.pool(F.relu(self.affine(self.conv(x))))


def _level(cin: int, elements: list) -> tuple[nn.Sequential, int]:
    blocks, c = [], cin
    for layer in elements:
        if layer.kind == "tag" and layer.args == (1,):  # each block starts with tag1
            blocks.append(None)
        if layer.kind == "con" and blocks and blocks[-1] is None:
            filters, _, stride = layer.args
            blocks[-1] = DlibBlock(c, filters, down=stride == 2)
            c = filters
    return nn.Sequential(*blocks), c


def map_side(input_size: int, levels: int = 5) -> int:
    """Side of the trunk's last map for a square input (0: too small for the network)."""
    side = (input_size - 7) // 2 + 1  # stem conv
    side = (side - 3) // 2 + 1  # max-pool
    for _ in range(levels - 1):  # each down block: conv 3x3/2 and avg-pool 2x2/2, padded to the larger
        if side < 3:
            return 0
        side = max((side - 3) // 2 + 1, (side - 2) // 2 + 1)
    return side


class DlibFaceTrunk(Trunk):
    """dlib's face-recognition ResNet without its descriptor layer (see the module docstring).

    Stages: ``stem``, ``level4`` (32 ch), ``level3`` (64), ``level2`` (128), ``level1`` (256),
    ``level0`` (256). Parameter names follow dlib's order so
    :func:`ferlib.models.face_weights.dlib_state_dict` maps the file onto them one to one."""

    #: how many residual levels (of dlib's five) this trunk keeps
    NUM_LEVELS = 5
    #: smallest input side, per kept levels (a down block needs a 3x3 map)
    MIN_SIZE = {5: 103, 4: 55}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.input_size < self.MIN_SIZE[self.NUM_LEVELS]:
            raise ValueError(
                f"arch {cfg.arch!r} needs input_size >= {self.MIN_SIZE[self.NUM_LEVELS]} px (dlib's network "
                f"has unpadded stride-2 layers; 112 is the kit's default for it, 150 dlib's own), got {cfg.input_size}"
            )
        self.stem = DlibStem()
        c = 32
        names = []
        for name, elements in LEVELS[1 : 1 + self.NUM_LEVELS]:
            level, c = _level(c, elements)
            setattr(self, name, level)
            names.append(name)
        self._names = names
        self.out_channels = c

    def stages(self) -> list[nn.Module]:
        return [self.stem, *(getattr(self, n) for n in self._names)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.stages():
            x = module(x)
        return x

    def parameter_layers(self) -> tuple[list[nn.Conv2d], list[Affine]]:
        """Convolutions and affine layers in dlib's (forward) order."""
        convs, affines = [self.stem.conv], [self.stem.affine]
        for name in self._names:
            for block in getattr(self, name):
                convs += [block.conv1, block.conv2]
                affines += [block.affine1, block.affine2]
        return convs, affines


class DlibFaceL1Trunk(DlibFaceTrunk):
    """``dlibface_l1``: :class:`DlibFaceTrunk` without dlib's last down block (``alevel0``):
    a 3x3 map at 112 px (4x4 at 150), for methods that compare attention maps."""

    NUM_LEVELS = 4


class DlibFaceRecognizer(nn.Module):
    """The whole face-recognition network: the trunk, a global average pool and dlib's 128-d
    descriptor (a bias-free linear layer). What dlib's ``compute_face_descriptor`` returns; the
    tests compare the two."""

    def __init__(self, model: DlibFaceModel):
        super().__init__()
        from ferlib.models.face_weights import dlib_state_dict

        self.trunk = DlibFaceTrunk(ModelConfig("dlibface", input_size=max(model.input_size, 103)))
        self.trunk.load_state_dict(dlib_state_dict(model))
        self.descriptor = nn.Linear(self.trunk.out_channels, model.fc.shape[0], bias=False)
        with torch.no_grad():
            self.descriptor.weight.copy_(torch.from_numpy(model.fc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.descriptor(self.trunk(x).mean(dim=(2, 3)))
