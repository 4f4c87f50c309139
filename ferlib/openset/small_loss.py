"""``small_loss``: the cross-entropy of the model's output at each row's given label.

The small-loss criterion (Arpit et al. 2017; Han et al. 2018, Co-teaching): a network fits
clean labels before it memorises flipped ones, so early in training (and for a network that
has not memorised them) a row whose loss on its *given* label is large is likely mislabelled.
It is the field's baseline detector of flipped training labels, which the noisy-label benchmark
(stage 05) scores beside RUL's uncertainty and the branches' disagreement: there the given label
is the row's (noisy) training label, which stage 05 passes as the pseudo label. Max softmax is
no such detector: it ignores the given label, so a row confidently predicted as its true class
scores as clean whatever label it was given.

In stage 03 the given label is the row's pseudo label. Under the honest protocol that is the
model's own prediction, so the score is ``-log`` of the maximum softmax probability, the same
ranking as ``msp``; under the reference protocol it is another row's prediction.

Score: ``logsumexp(logits) - logits[given]`` >= 0; higher = more likely flipped (or open).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData


class SmallLoss(Detector):
    """Cross-entropy of the logits at the given (pseudo) label; no parameters."""

    name = "small_loss"
    reads_model_outputs = True
    reads_pseudo_labels = True

    def score(self, data: OpenSetData) -> np.ndarray:
        logits = np.asarray(data.logits, dtype=np.float64)
        given = data.pseudo
        if given.shape != (len(logits),) or given.min(initial=0) < 0 or given.max(initial=0) >= logits.shape[1]:
            raise ValueError(
                f"detector 'small_loss': one given label in [0, {logits.shape[1]}) per row is needed, "
                f"got shape {given.shape}"
            )
        return logsumexp(logits, axis=1) - logits[np.arange(len(logits)), given]
