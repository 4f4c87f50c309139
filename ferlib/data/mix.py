"""CutMix on a whole training batch (Yun et al., ICCV 2019), deterministic given a generator.

Why: on FERPlus the warp (rotation, shift, zoom) was the one augmentation that moved the
close-set plateau (docs/journal/time_to_accuracy.md), and the models still end near .85
validation. CutMix is the regulariser the CIFAR and ImageNet from-scratch recipes add next: a
rectangle of each face is replaced by the same rectangle of another face in the batch, and the
target becomes the two labels weighted by the areas, so the network cannot rest on one region
(the mouth alone, say) and is trained on non-one-hot targets. Measured on FERPlus (40 epochs,
48 px, ``cutmix_p`` .5): no gain on validation (docs/journal/time_to_accuracy.md, "CutMix and a 60-epoch
schedule"), so no recipe turns it on. It differs from RUL's mixup (:mod:`ferlib.losses.rul`), which
mixes *features* inside an objective with learned weights; this one mixes *pixels and targets*
before any objective, so it works for every objective whose loss is cross-entropy on soft
targets plus target-free terms (``ce``, ``cam_flip``: the loop checks).

The paper's sampling, with its default ``alpha = 1``: the kept share ``lam`` is uniform on
(0, 1), the box has the sides ``sqrt(1 - lam)`` of the image's, its centre uniform over the
image, clipped at the border, and ``lam`` is then recomputed from the clipped box. Each batch
is mixed with probability ``p`` (the paper's CIFAR setting: .5); a mixed batch pairs every
image with a random other one of the batch (one permutation) and uses one box for the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def one_hot_targets(targets: Tensor, num_classes: int) -> Tensor:
    """Float ``(B, K)`` targets: one-hot rows for class indices, soft rows (vote
    distributions) unchanged but as float32."""
    if targets.is_floating_point():
        if targets.dim() != 2 or targets.shape[1] != num_classes:
            raise ValueError(f"soft targets must be (B, {num_classes}), got {tuple(targets.shape)}")
        return targets.float()
    if targets.dim() != 1:
        raise ValueError(f"class-index targets must be (B,), got {tuple(targets.shape)}")
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {int(targets.min())}..{int(targets.max())}")
    return torch.nn.functional.one_hot(targets, num_classes).float()


def cutmix_batch(
    x: Tensor,
    targets: Tensor,
    num_classes: int,
    p: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """``(x', targets')``: with probability ``p`` the batch cut-mixed, else ``x`` itself.

    ``x``: float images ``(B, C, H, W)`` (normalised, after the other augmentation).
    ``targets``: class indices ``(B,)`` or soft targets ``(B, K)``. The returned targets are
    always float ``(B, K)`` (one-hot when the batch was not mixed), so the loss sees one kind
    of target for the whole run. Every draw comes from ``generator`` (on its device), so a
    seeded generator reproduces the epoch; the pixels are mixed on ``x``'s device.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutmix p must be in [0, 1], got {p}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"cutmix expects a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    y = one_hot_targets(targets, num_classes).to(x.device)
    b, _, h, w = x.shape
    if len(y) != b:
        raise ValueError(f"{b} images but {len(y)} targets")
    rdev = generator.device if generator is not None else x.device
    u = torch.rand(4, generator=generator, device=rdev).tolist()  # apply, lam, centre row, centre column
    order = torch.randperm(b, generator=generator, device=rdev).to(x.device)
    if b < 2 or u[0] >= p:
        return x, y
    cut = math.sqrt(1.0 - u[1])
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(u[2] * h), int(u[3] * w)
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    if lam == 1.0:  # the box vanished at the border: nothing mixed
        return x, y
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x[order, :, top:bottom, left:right]
    return mixed, lam * y + (1.0 - lam) * y[order]
