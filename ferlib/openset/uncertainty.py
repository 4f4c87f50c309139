"""``uncertainty``: Relative Uncertainty Learning's per-sample uncertainty as the open score.

RUL (NeurIPS 2021) learns, beside the classifier, a positive scalar ``u`` per sample, the
mean of ``exp(log sigma^2)`` over the embedding's dimensions, from how much each sample
should count when mixed with another (:mod:`ferlib.losses.rul`). It was proposed for noisy
labels, where ``u`` grows on samples the model cannot fit; an image of a class the model
never saw is such a sample, so ``u`` is a direct open score with no fitting at all (higher
= more uncertain = more likely open). It needs a close-set model trained with the
``uncertainty`` head (and the ``rul`` objective, without which ``u`` gets no training
signal); stage 02 saves ``u`` per evaluation row.
"""

from __future__ import annotations

import numpy as np

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData


class UncertaintyScore(Detector):
    """The close-set model's per-sample uncertainty ``u`` (extras ``uncertainty``); no parameters."""

    name = "uncertainty"
    reads_model_outputs = True
    reads_extras = {"uncertainty": "uncertainty"}

    def score(self, data: OpenSetData) -> np.ndarray:
        u = self.model_extra(data, "uncertainty").astype(np.float64)
        if u.shape != (len(data),):
            raise ValueError(f"detector 'uncertainty': extras 'uncertainty' must be one value per row, got {u.shape}")
        return u
