"""Backbones: torchvision ResNet-18/50 with a stem for small faces and class-activation maps.

Why a second stem: torchvision's ImageNet stem (7x7 stride-2 conv + max-pool) divides the
input by 32, so a 48-px FERPlus face ends as a 2x2 map, too coarse for the attention maps
that the open-set method compares under a flip. The ``small`` stem (3x3 stride-1 conv +
max-pool) divides by 16: 48 px gives 3x3, 112 px gives the 7x7 map the paper gets at 224.

This module knows architectures only, nothing about files of data sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

ARCHS = {"resnet18": (tvm.resnet18, 512), "resnet50": (tvm.resnet50, 2048)}


@dataclass
class ModelConfig:
    """What to build. ``pretrained`` is a path to a state dict, never a download."""

    arch: str = "resnet18"
    num_classes: int = 7
    input_size: int = 48
    stem: str = "auto"  # "auto" | "small" | "imagenet"
    pretrained: str | None = None
    dropout: float = 0.0

    def resolved_stem(self) -> str:
        if self.stem == "auto":
            return "small" if self.input_size < 160 else "imagenet"
        if self.stem not in ("small", "imagenet"):
            raise ValueError(f"stem must be 'auto', 'small' or 'imagenet', got {self.stem!r}")
        return self.stem


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # (B, K)
    features: torch.Tensor  # (B, C) pooled, before the classifier
    feature_map: torch.Tensor  # (B, C, h, w), last conv block


class FERNet(nn.Module):
    """A ResNet trunk, global average pooling and one linear classifier.

    Keeping the classifier a single ``nn.Linear`` on pooled features is what makes the
    class-activation map exact: ``M_k = sum_c W_kc F_c`` (Zhou et al., CAM).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {cfg.arch!r}")
        if not 32 <= cfg.input_size <= 256:
            raise ValueError(f"input_size must be in 32..256 px, got {cfg.input_size}")
        self.cfg = cfg
        factory, width = ARCHS[cfg.arch]
        trunk = factory(weights=None)
        if cfg.resolved_stem() == "small":
            trunk.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        self.layer1, self.layer2 = trunk.layer1, trunk.layer2
        self.layer3, self.layer4 = trunk.layer3, trunk.layer4
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, cfg.num_classes)
        self.num_features = width

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_all(self, x: torch.Tensor) -> ForwardOutput:
        fmap = self.feature_map(x)
        pooled = fmap.mean(dim=(2, 3))
        return ForwardOutput(self.fc(self.dropout(pooled)), pooled, fmap)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Class activation maps (B, K, h, w) for every class; fc weights detached.

        Detaching W (as the reference does) makes the consistency loss shape the features,
        not shrink the classifier towards zero.
        """
        return torch.einsum("kc,bchw->bkhw", self.fc.weight.detach(), feature_map)


def _unwrap_state_dict(obj) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                return _unwrap_state_dict(obj[key])
        return obj
    raise ValueError("file holds no state dict")


def _rename(key: str) -> str:
    for prefix in ("module.", "backbone.", "base.", "features."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    for old in ("conv1.", "bn1."):
        if key.startswith(old):
            return "stem." + {"conv1.": "0.", "bn1.": "1."}[old] + key[len(old):]
    return key


@dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "mismatched"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name} ({len(keys)}): {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
        return "; ".join(lines)


def load_pretrained(model: FERNet, path: str | Path, verbose: bool = True) -> LoadReport:
    """Load a face-recognition state dict (e.g. MS-Celeb ``resnet18_msceleb.pth``) non-strictly.

    Tensors whose shapes differ (the classifier, a 3x3 small stem against a 7x7 checkpoint)
    are skipped and reported rather than failing, because the useful part of such weights
    is the trunk.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
        state = {_rename(k): v for k, v in _unwrap_state_dict(raw).items() if torch.is_tensor(v)}
    except Exception as exc:  # noqa: BLE001 - name the file, whatever torch says
        raise ValueError(f"{path}: not a readable PyTorch state dict ({exc})") from exc
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    report = LoadReport(
        loaded=sorted(usable),
        missing=sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked")),
        unexpected=sorted(k for k in state if k not in own),
        mismatched=sorted(k for k in state if k in own and own[k].shape != state[k].shape),
    )
    if not usable:
        raise ValueError(f"{path}: no tensor matches the {model.cfg.arch} architecture ({report})")
    model.load_state_dict(usable, strict=False)
    if verbose:
        print(f"pretrained weights from {path}: {report}")
    return report


def build_model(cfg: ModelConfig, verbose: bool = True) -> FERNet:
    """Build a :class:`FERNet`; load weights when ``cfg.pretrained`` names a file.

    Without weights the model starts from scratch, and says so: results from scratch are
    not comparable with the papers' face-pretrained numbers.
    """
    model = FERNet(cfg)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, verbose=verbose)
    elif verbose:
        print(f"{cfg.arch}: no pretrained weights given; training from scratch "
              "(the papers start from face-recognition weights)")
    return model
