"""Objectives that plug into :func:`ferlib.train.fit`.

Each is a small callable ``(model, x, y, index) -> (loss, logits)``; the training loop
stays the same for every method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ferlib.train import CrossEntropy

__all__ = ["CrossEntropy", "CamFlipConsistency", "flip_cam"]


def flip_cam(cam: torch.Tensor) -> torch.Tensor:
    """Mirror class-activation maps along the width (equal to grid_sample with negated x,
    align_corners=True, as the reference implements it)."""
    return torch.flip(cam, dims=[-1])


class CamFlipConsistency:
    """Cross-entropy plus attention-map flip consistency (EAC, ECCV 2022; METHODS.md part 1).

    view 1 = the augmented image, view 2 = its mirror (the same erased image mirrored).
    Loss = CE(f(view1), y) + lambda * MSE(M(view1), flip(M(view2))), the MSE over every
    class map and position, with the classifier weights detached inside the maps.
    Both views go through the network in one batch: one forward pass instead of two.
    ``lam=0`` reduces to cross-entropy (the ablation switch).
    """

    def __init__(self, lam: float = 5.0):
        self.lam = float(lam)

    def __call__(self, model, x, y, index):
        if self.lam == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        both = model.forward_all(torch.cat([x, torch.flip(x, dims=[3])]))
        n = len(x)
        logits = both.logits[:n]
        cams = model.cam(both.feature_map)
        consistency = F.mse_loss(cams[:n], flip_cam(cams[n:]))
        return F.cross_entropy(logits, y) + self.lam * consistency, logits
