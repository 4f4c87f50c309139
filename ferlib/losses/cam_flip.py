"""``cam_flip``: cross-entropy plus attention-map flip consistency (EAC, ECCV 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ferlib.losses.base import BaseObjective


def flip_cam(cam: torch.Tensor) -> torch.Tensor:
    """Mirror class-activation maps along the width (equal to grid_sample with negated x,
    align_corners=True, as the reference implements it)."""
    return torch.flip(cam, dims=[-1])


class CamFlipConsistency(BaseObjective):
    """Cross-entropy plus attention-map flip consistency (METHODS.md part 1).

    view 1 = the augmented image, view 2 = its mirror (the same erased image mirrored).
    Loss = CE(f(view1), y) + lam * MSE(M(view1), flip(M(view2))), the MSE over every
    class map and position, with the classifier weights detached inside the maps.
    Both views go through the network in one batch: one forward pass instead of two.
    ``lam=0`` reduces to cross-entropy (the ablation switch).

    Parameters
    ----------
    lam : float
        Weight of the consistency term (>= 0; the reference uses 5).
    """

    name = "cam_flip"

    def __init__(self, lam: float = 5.0):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"objective 'cam_flip': lam must be a finite number >= 0, got {lam!r}")
        self.lam = float(lam)

    def check(self, model) -> None:
        if self.lam != 0 and not getattr(model, "supports_cam", False):
            head = getattr(getattr(model, "cfg", None), "head", type(model).__name__)
            raise ValueError(
                f"objective 'cam_flip' compares class-activation maps, but head {head!r} "
                "has none; use a head with CAM (e.g. 'linear') or lam=0"
            )

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
