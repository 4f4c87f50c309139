"""What every network of the kit is built from and what it returns.

A network is a *trunk* (a feature extractor ending in a spatial feature map) and a *head*
chosen by name (:mod:`ferlib.models.registry`). Keeping the two apart lets a method swap
its head (an uncertainty head for Relative Uncertainty Learning, B branches for an
ensemble) without copying a backbone, and lets the detectors keep reading the same two
tensors, ``logits`` and ``features``, whatever the head adds in ``extras``.

This package knows architectures only, nothing about files of data sets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class ModelConfig:
    """What to build. ``pretrained`` is a path to a state dict, never a download.

    ``head`` names an entry of :data:`ferlib.models.registry.HEADS`; ``head_params`` are
    that head's keyword parameters (checked by :func:`ferlib.models.validate_head`).
    """

    arch: str = "resnet18"
    num_classes: int = 7
    input_size: int = 48
    stem: str = "auto"  # "auto" | "small" | "imagenet"
    pretrained: str | None = None
    dropout: float = 0.0
    head: str = "linear"
    head_params: dict[str, Any] = field(default_factory=dict)

    def resolved_stem(self) -> str:
        """``small`` below 160 px with ``auto``: torchvision's ImageNet stem divides the input
        by 32, which leaves a 48-px face a 2x2 map, too coarse for attention maps."""
        if self.stem == "auto":
            return "small" if self.input_size < 160 else "imagenet"
        if self.stem not in ("small", "imagenet"):
            raise ValueError(f"stem must be 'auto', 'small' or 'imagenet', got {self.stem!r}")
        return self.stem


@dataclass
class ForwardOutput:
    """Everything one forward pass yields.

    ``logits`` and ``features`` are what the training loop, :func:`ferlib.train.predict`
    and every detector read, for every head; ``extras`` holds what only some heads
    produce (``sigma``/``log_var`` of the uncertainty head, ``branch_logits`` of the
    branches head), so that a new head adds keys instead of changing this type.
    """

    logits: torch.Tensor  # (B, K)
    features: torch.Tensor  # (B, C) pooled trunk features, before any classifier
    feature_map: torch.Tensor  # (B, C, h, w), the trunk's last block
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class HeadOutput:
    """What a head returns from the trunk's feature map (the net adds the feature map)."""

    logits: torch.Tensor
    features: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Head(nn.Module):
    """Maps the trunk's feature map (B, C, h, w) to logits, pooled features and extras.

    A head's own settings are *keyword-only* arguments of its ``__init__`` (after
    ``in_features``, ``num_classes`` and ``dropout``, which the network passes): the
    registry reads their names from the signature to validate ``head_params``, so a
    head declares its parameters once. Invalid values raise ``ValueError`` in
    ``__init__``.
    """

    name: ClassVar[str] = ""
    #: whether :meth:`cam` gives exact class-activation maps (objectives such as
    #: ``cam_flip`` check this before the first batch)
    supports_cam: ClassVar[bool] = False

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"head {self.name!r}: num_classes must be at least 1, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head {self.name!r}: dropout must be in [0, 1), got {dropout}")
        self.in_features = in_features
        self.num_classes = num_classes

    def forward(self, feature_map: torch.Tensor) -> HeadOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def cam(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Class-activation maps (B, K, h, w) whose spatial mean plus the bias is the logit."""
        raise NotImplementedError(f"head {self.name!r} has no class-activation maps")


def check_positive_int(head: str, name: str, value: object) -> int:
    """``value`` as an int >= 1, else a ValueError naming the head and parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"head {head!r}: {name} must be an integer >= 1, got {value!r}")
    return value
