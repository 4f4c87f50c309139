"""Toy training data shared by the tests of the training loop: two classes that differ by
brightness, learnable in a couple of epochs on a CPU."""

from __future__ import annotations

import torch


def brightness_pairs(n: int, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: uint8 ``(n, 3, size, size)`` images, class 1 bright and class 0
    dark, with uniform noise of +-30 grey levels; labels alternate 0, 1, 0, ..."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = torch.where(y[:, None, None, None] == 1, 190, 60)
    x = (base + torch.randint(-30, 30, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
    return x, y
