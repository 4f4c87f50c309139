"""The share of open rows in an unlabeled evaluation set, from a held-out close reference.

Why. Detectors that learn from the evaluation set pick pseudo-outliers as a fixed share of
its rows (``pseudo_oe``'s ``top_fraction``), but the open share of FERPlus's evaluation sets
runs from 6% (Disgust) to 84% (Neutral): a fixed share is mostly close rows on one class and
a sliver of the open rows on another. Measured with the true share in its place (a
diagnostic that reads the truth, ``tools/oracle_share.py``), ``pseudo_oe`` gains several
points of AUROC. The share can be estimated without a label of the evaluation set: the
evaluation set is a mixture ``alpha * close + (1 - alpha) * open``, and a reference sample of
*unseen* close images (the validation split's close rows, never trained on) shows what the
close part's score distribution looks like.

Estimator: best-bin estimation (Garg et al., "Mixture Proportion Estimation and PU Learning:
A Modern Approach", NeurIPS 2021), on any score where higher means more likely open. For
every threshold ``t``, ``F_eval(t) >= alpha * F_ref(t)`` (``F``: share of rows scored at or
below ``t``), with equality where open rows are absent; so ``alpha <= min_t F_eval(t) /
F_ref(t)``. A minimum over noisy ratios of small counts is biased low, so, as Garg et al. do,
the threshold is the one that minimises the ratio's upper confidence bound
``(F_eval + e_eval) / (F_ref - e_ref)`` (``e = sqrt(log(4 / delta) / (2 n))``, Hoeffding), and
``alpha`` is the plain ratio there; thresholds keep at least ``min_reference`` of the reference
rows. The open share is ``1 - alpha``: an estimate that errs low when open rows reach into the
chosen bin, so a better score gives a tighter estimate.
"""

from __future__ import annotations

import numpy as np

__all__ = ["estimate_open_share"]


def estimate_open_share(
    eval_scores: np.ndarray,
    reference_scores: np.ndarray,
    min_reference: float = 0.05,
    grid: int = 200,
    delta: float = 0.1,
) -> float:
    """Estimated share of open rows among ``eval_scores`` (higher = more likely open), given
    ``reference_scores``, the same score on held-out close rows. In ``[0, 1]``."""
    e = np.asarray(eval_scores, np.float64).ravel()
    r = np.asarray(reference_scores, np.float64).ravel()
    if len(e) == 0 or len(r) == 0:
        raise ValueError(f"need evaluation and reference scores, got {len(e)} and {len(r)}")
    if not (np.isfinite(e).all() and np.isfinite(r).all()):
        raise ValueError("scores must be finite")
    if not 0.0 < min_reference <= 1.0:
        raise ValueError(f"min_reference must be in (0, 1], got {min_reference}")
    thresholds = np.quantile(r, np.linspace(min_reference, 1.0, grid))
    e_sorted, r_sorted = np.sort(e), np.sort(r)
    f_eval = np.searchsorted(e_sorted, thresholds, side="right") / len(e)
    f_ref = np.searchsorted(r_sorted, thresholds, side="right") / len(r)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    e_eval = np.sqrt(np.log(4.0 / delta) / (2.0 * len(e)))
    e_ref = np.sqrt(np.log(4.0 / delta) / (2.0 * len(r)))
    bound = (f_eval + e_eval) / np.maximum(f_ref - e_ref, 1e-12)
    best = int(np.argmin(np.where(f_ref - e_ref > 0, bound, np.inf)))
    alpha = float(f_eval[best] / max(f_ref[best], 1e-12))
    return float(np.clip(1.0 - alpha, 0.0, 1.0))
