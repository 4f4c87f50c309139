"""``disagreement``: how much a branch ensemble's members disagree, as the open score.

The ``branches`` head (ESR-style) trains several classifiers on one trunk; on the close
classes they learnt the same answer, while an image of an unseen class has no right
answer to agree on, so their disagreement is an open score (higher = more likely open)
that needs no fitting. Two measures (parameter ``measure``):

- ``kl`` (default): the mean over branches of ``KL(p_b || p_mean)``, ``p_b`` a branch's
  softmax and ``p_mean`` their average; this is the ensemble's mutual information
  ``H(p_mean) - mean_b H(p_b)`` (BALD), zero exactly when every branch predicts the same
  distribution, and graded, so it also ranks samples on which the votes agree.
- ``vote``: one minus the share of branches voting for the most voted class; coarse (it
  takes ``branches`` values at most) but free of the softmax's calibration.

It reads ``extras["branch_logits"]`` (rows, branches, K), which stage 02 saves for a
close-set model trained with the ``branches`` head.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from ferlib.openset.base import Detector
from ferlib.openset.data import OpenSetData

MEASURES = ("kl", "vote")


class BranchDisagreement(Detector):
    """Disagreement of the branch ensemble (extras ``branch_logits``).

    Parameters
    ----------
    measure : str
        ``kl`` (mean KL of each branch's softmax from the mean softmax) or ``vote``
        (1 - share of branches voting for the majority class).
    """

    name = "disagreement"
    reads_model_outputs = True
    reads_extras = {"branch_logits": "branches"}

    def __init__(self, measure: str = "kl"):
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {list(MEASURES)}, got {measure!r}")
        self.measure = measure

    def __repr__(self) -> str:
        return f"BranchDisagreement(measure={self.measure!r})"

    def score(self, data: OpenSetData) -> np.ndarray:
        logits = self.model_extra(data, "branch_logits").astype(np.float64)
        if logits.ndim != 3 or len(logits) != len(data):
            raise ValueError(
                f"detector 'disagreement': extras 'branch_logits' must be (rows, branches, K), got {logits.shape}"
            )
        if logits.shape[1] < 2:
            raise ValueError("detector 'disagreement' needs at least 2 branches (head 'branches', branches >= 2)")
        if self.measure == "vote":
            votes = logits.argmax(axis=2)  # (rows, branches)
            k = logits.shape[2]
            counts = np.stack([(votes == c).sum(axis=1) for c in range(k)], axis=1)
            return 1.0 - counts.max(axis=1) / logits.shape[1]
        logp = log_softmax(logits, axis=2)
        p = np.exp(logp)
        log_mean = np.log(np.clip(p.mean(axis=1, keepdims=True), 1e-300, None))
        return (p * (logp - log_mean)).sum(axis=2).mean(axis=1)
