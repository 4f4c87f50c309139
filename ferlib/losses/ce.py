"""``ce``: plain cross-entropy on the augmented view (the close-set objective)."""

from __future__ import annotations

import torch.nn.functional as F

from ferlib.losses.base import BaseObjective


class CrossEntropy(BaseObjective):
    """Cross-entropy of ``model(x)`` against the targets; no parameters."""

    name = "ce"

    def __call__(self, model, x, y, index):
        logits = model(x)
        return F.cross_entropy(logits, y), logits
