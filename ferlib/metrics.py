"""Open-set and close-set metrics, on top of scikit-learn.

Kit-wide conventions (docs/DESIGN.md):

* a detector's score is *higher = more likely open*;
* the **close set is the positive class**, as in the paper: AUROC is the area under the ROC
  curve of ``close = 1`` against ``-score``; FPR@TPR95 is the fraction of open samples accepted
  at the threshold that accepts 95% of the close samples.

Every curve comes from :mod:`sklearn.metrics`; nothing here re-implements a ROC curve.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "METRIC_COLUMNS",
    "openset_metrics",
    "fpr_at_tpr",
    "accuracy",
    "confusion",
    "close_accuracy",
    "close_set_warning",
    "near_chance_warning",
    "NEAR_CHANCE_FACTOR",
    "metrics_table",
    "pseudo_label_spread_table",
]

#: Columns of :func:`metrics_table` (``close_acc`` is appended when it can be computed).
METRIC_COLUMNS: tuple[str, ...] = (
    "detector",
    "protocol",
    "auroc",
    "fpr95",
    "aupr_in",
    "aupr_out",
    "n_close",
    "n_open",
)


def _as_open_mask(is_open, name: str = "is_open") -> np.ndarray:
    """``is_open`` as a boolean array; accepts bools, 0/1 integers or floats, 'True'/'False'."""
    arr = np.asarray(is_open)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind in "iuf":
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            raise ValueError(f"{name} has {int(np.isnan(arr).sum())} NaN values")
        bad = ~np.isin(arr, (0, 1))
        if bad.any():
            raise ValueError(f"{name} must be boolean or 0/1; found values {np.unique(arr[bad])[:5].tolist()}")
        return arr.astype(bool)
    # strings / objects, e.g. a CSV column read as text
    text = np.char.lower(np.asarray(arr, dtype=str))
    truthy = np.isin(text, ("true", "1", "1.0"))
    falsy = np.isin(text, ("false", "0", "0.0"))
    if not (truthy | falsy).all():
        bad = np.unique(arr[~(truthy | falsy)])[:5].tolist()
        raise ValueError(f"{name} must be boolean or 0/1; found values {bad}")
    return truthy


def _check_scores(scores, is_open) -> tuple[np.ndarray, np.ndarray]:
    try:
        if hasattr(scores, "to_numpy"):  # pandas, nullable dtypes included (NA -> NaN)
            s = scores.to_numpy(dtype=float, na_value=np.nan).reshape(-1)
        else:
            s = np.asarray(scores, dtype=float).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"scores must be numeric: {exc}") from None
    o = _as_open_mask(is_open)
    if s.shape[0] != o.shape[0]:
        raise ValueError(f"scores and is_open differ in length: {s.shape[0]} scores, {o.shape[0]} labels")
    n_nan = int(np.isnan(s).sum())
    n_inf = int(np.isinf(s).sum())
    if n_nan or n_inf:
        parts = []
        if n_nan:
            parts.append(f"{n_nan} NaN")
        if n_inf:
            parts.append(f"{n_inf} infinite")
        raise ValueError(
            f"scores contain {' and '.join(parts)} value(s) out of {s.shape[0]}; a detector produced non-finite scores"
        )
    n_open = int(o.sum())
    n_close = int(o.shape[0] - n_open)
    if n_open == 0 or n_close == 0:
        raise ValueError(f"open-set metrics need both classes; got {n_close} close and {n_open} open samples")
    return s, o


def fpr_at_tpr(scores, is_open, tpr: float = 0.95) -> float:
    """Fraction of open samples accepted at the threshold that accepts ``tpr`` of the close ones.

    The ROC curve (close positive, ``-scores``) comes from :func:`sklearn.metrics.roc_curve`
    and is read by linear interpolation of FPR over TPR. This is ``np.interp(tpr, tprs, fprs)``
    except where the target TPR is reached exactly by a horizontal stretch of the curve (several
    thresholds accept exactly that fraction of close samples, e.g. 19 of 20): ``np.interp`` is
    undefined on such ties, and we take the lowest FPR, i.e. the best threshold that accepts
    the required fraction. Tied scores between close and open samples give a diagonal segment
    of the curve, which the interpolation follows (the expectation over random tie breaking).
    """
    s, o = _check_scores(scores, is_open)
    return _fpr_at_tpr(s, o, tpr)


def _fpr_at_tpr(s: np.ndarray, o: np.ndarray, tpr: float) -> float:
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    fprs, tprs, _ = roc_curve((~o).astype(int), -s, drop_intermediate=False)
    i = int(np.searchsorted(tprs, tpr, side="left"))  # first point with tprs[i] >= tpr
    i = min(i, len(tprs) - 1)
    if i == 0 or tprs[i] == tpr:
        return float(fprs[i])
    t0, t1, f0, f1 = tprs[i - 1], tprs[i], fprs[i - 1], fprs[i]
    return float(f0 + (f1 - f0) * (tpr - t0) / (t1 - t0))


def openset_metrics(scores, is_open, tpr: float = 0.95) -> dict:
    """AUROC, FPR@TPR, AUPR-in and AUPR-out of an open-set score.

    Parameters
    ----------
    scores:
        one score per sample, **higher = more likely open** (the kit-wide sign).
    is_open:
        boolean (or 0/1) per sample, true for open samples.
    tpr:
        the close-set acceptance rate at which the FPR is read (0.95: FPR@TPR95). The key is
        ``fpr95`` whatever the value.

    Returns
    -------
    dict with ``auroc`` (close positive), ``fpr95``, ``aupr_in`` (average precision, close
    positive), ``aupr_out`` (average precision, open positive), ``n_close``, ``n_open``.

    Raises ``ValueError`` when the lengths differ, when only one class is present, or when
    scores contain NaN or infinite values (with their count).
    """
    s, o = _check_scores(scores, is_open)
    close = (~o).astype(int)
    return {
        "auroc": float(roc_auc_score(close, -s)),
        "fpr95": _fpr_at_tpr(s, o, tpr),
        "aupr_in": float(average_precision_score(close, -s)),
        "aupr_out": float(average_precision_score(o.astype(int), s)),
        "n_close": int(close.sum()),
        "n_open": int(o.sum()),
    }


def _check_pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).reshape(-1)
    p = np.asarray(y_pred).reshape(-1)
    if t.shape[0] != p.shape[0]:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty")
    return t, p


def accuracy(y_true, y_pred) -> float:
    """Fraction of ``y_pred`` equal to ``y_true``."""
    t, p = _check_pair(y_true, y_pred)
    return float(accuracy_score(t, p))


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """``n_classes x n_classes`` count matrix, rows = true class, columns = predicted class.

    Classes are the integers ``0..n_classes-1``; any other value raises ``ValueError``
    (scikit-learn would silently drop it).
    """
    t, p = _check_pair(y_true, y_pred)
    for name, arr in (("y_true", t), ("y_pred", p)):
        bad = ~np.isin(arr, np.arange(n_classes))
        if bad.any():
            raise ValueError(
                f"{name} has {int(bad.sum())} value(s) outside 0..{n_classes - 1}, "
                f"e.g. {np.unique(arr[bad])[:5].tolist()}"
            )
    return confusion_matrix(t, p, labels=np.arange(n_classes))


def close_accuracy(labels, pseudo, is_open, close_classes: Sequence[int] | None = None) -> float:
    """Close-set accuracy of the pseudo labels on the close samples.

    ``labels`` are canonical emotion integers, ``pseudo`` contiguous close-class targets
    ``0..K-1``. Targets follow the close classes in enum order (the kit's ``LabelMap``), so
    ``close_classes`` defaults to the sorted canonical labels present among close samples;
    pass it explicitly when a close class may be absent from the evaluation set.
    """
    o = _as_open_mask(is_open)
    lab = np.asarray(labels).reshape(-1)
    ps = np.asarray(pseudo).reshape(-1)
    if not (lab.shape[0] == ps.shape[0] == o.shape[0]):
        raise ValueError(f"labels, pseudo and is_open differ in length: {lab.shape[0]}, {ps.shape[0]}, {o.shape[0]}")
    lab, ps = lab[~o].astype(int), ps[~o].astype(int)
    if lab.size == 0:
        raise ValueError("no close samples to compute close-set accuracy on")
    classes = np.unique(lab) if close_classes is None else np.asarray(sorted(close_classes))
    unknown = ~np.isin(lab, classes)
    if unknown.any():
        raise ValueError(f"close samples carry labels not in close_classes: {np.unique(lab[unknown]).tolist()}")
    target = np.searchsorted(classes, lab)
    return accuracy(target, ps)


#: a close-set model whose validation accuracy is below this multiple of chance (1 / classes)
#: is called near chance: open-set detection numbers on top of it are flagged
NEAR_CHANCE_FACTOR = 1.5


def near_chance_warning(val_acc: float, num_classes: int, factor: float = NEAR_CHANCE_FACTOR) -> str | None:
    """A warning when validation accuracy ``val_acc`` is below ``factor`` times chance
    (``1 / num_classes``), else ``None``.

    Why: every detector reads what the close-set model learnt. A model near chance has learnt
    next to nothing about the expressions, so a detector's AUROC then measures whatever else
    tells the evaluation rows apart (on a set split by subject: seen against unseen people),
    and numbers far from .5 on either side are no evidence about open-set recognition.
    """
    if num_classes < 2 or not np.isfinite(val_acc):
        return None
    chance = 1.0 / num_classes
    if val_acc >= factor * chance:
        return None
    return (
        f"the close-set model is near chance: validation accuracy {val_acc:.3f} with {num_classes} classes "
        f"(chance {chance:.3f}; flagged below {factor:g} x chance = {factor * chance:.3f}). Open-set detection "
        "numbers on this model mean nothing: a detector can only separate what the model tells apart"
    )


def close_set_warning(results: dict, history=None, factor: float = NEAR_CHANCE_FACTOR) -> str | None:
    """:func:`near_chance_warning` for a finished stage 01, from its ``results.json``
    (``results``) and per-epoch ``history`` (a DataFrame or list of dicts with ``val_acc``).

    Reads ``results["val_acc"]`` (the best epoch's validation accuracy, recorded since this
    check exists), else the history's ``val_acc`` at ``results["best_epoch"]`` (older runs),
    else the best ``val_acc`` of the history; ``None`` when none of these is there or the
    class count is unknown (no ``class_names``)."""
    num_classes = len(results.get("class_names") or [])
    val_acc = results.get("val_acc")
    if val_acc is None and history is not None:
        import pandas as pd

        frame = pd.DataFrame(history)
        if "val_acc" in frame.columns and frame["val_acc"].notna().any():
            best = results.get("best_epoch")
            if isinstance(best, int) and 1 <= best <= len(frame) and np.isfinite(frame["val_acc"].iloc[best - 1]):
                val_acc = float(frame["val_acc"].iloc[best - 1])
            else:
                val_acc = float(frame["val_acc"].max())
    if val_acc is None:
        return None
    return near_chance_warning(float(val_acc), num_classes, factor)


def metrics_table(
    scores_frame,
    detectors: Iterable[str],
    protocol: str,
    *,
    tpr: float = 0.95,
    close_classes: Sequence[int] | None = None,
):
    """One row per detector: ``detector, protocol, auroc, fpr95, aupr_in, aupr_out, n_close,
    n_open`` and, when the frame has ``label`` and ``pseudo`` columns, ``close_acc`` (the
    close-set accuracy of the pseudo labels, see :func:`close_accuracy`; the same for every
    row).

    ``scores_frame`` is the scores table of docs/DESIGN.md (``index, path, label, pseudo,
    is_open, origin`` then one column per detector, higher = open).
    """
    import pandas as pd

    detectors = list(detectors)
    if not detectors:
        raise ValueError("no detectors given")
    if "is_open" not in scores_frame.columns:
        raise ValueError("scores table has no 'is_open' column")
    missing = [d for d in detectors if d not in scores_frame.columns]
    if missing:
        raise ValueError(
            f"detector column(s) {missing} not in the scores table; columns are {list(scores_frame.columns)}"
        )
    is_open = _as_open_mask(scores_frame["is_open"].to_numpy())
    rows = []
    for det in detectors:
        try:
            m = openset_metrics(scores_frame[det].to_numpy(), is_open, tpr=tpr)
        except ValueError as exc:
            raise ValueError(f"detector {det!r}: {exc}") from None
        rows.append({"detector": det, "protocol": protocol, **m})
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    if {"label", "pseudo"} <= set(scores_frame.columns):
        table["close_acc"] = close_accuracy(
            scores_frame["label"].to_numpy(),
            scores_frame["pseudo"].to_numpy(),
            is_open,
            close_classes,
        )
    return table


def pseudo_label_spread_table(table, class_names: Sequence[str]):
    """How the open samples' pseudo labels spread over the close classes.

    ``table`` is a pseudo-label table (``index, path, label, pseudo, is_open, origin``; ``pseudo``
    = close-class target 0..K-1), ``class_names`` the K close classes in target order.
    Returns one row per close class: ``target, class, count, fraction`` (fraction of open
    samples). ``attrs`` holds ``n_open``, ``uniform`` (1/K) and ``tv_from_uniform``, the
    total-variation distance to the uniform spread (0 = symmetric noise as the paper claims,
    1 - 1/K = all open samples on one class).
    """
    import pandas as pd

    missing = [c for c in ("pseudo", "is_open") if c not in table.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; columns are {list(table.columns)}")
    k = len(class_names)
    if k == 0:
        raise ValueError("class_names is empty")
    is_open = _as_open_mask(table["is_open"].to_numpy())
    pseudo = table["pseudo"].to_numpy()[is_open]
    if pseudo.size == 0:
        raise ValueError("the table has no open samples")
    pseudo = pseudo.astype(int)
    bad = (pseudo < 0) | (pseudo >= k)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} open sample(s) have pseudo labels outside 0..{k - 1} "
            f"(e.g. {np.unique(pseudo[bad])[:5].tolist()}) for {k} class names"
        )
    counts = np.bincount(pseudo, minlength=k)
    fractions = counts / counts.sum()
    out = pd.DataFrame(
        {
            "target": np.arange(k),
            "class": [str(c) for c in class_names],
            "count": counts.astype(int),
            "fraction": fractions,
        }
    )
    out.attrs["n_open"] = int(counts.sum())
    out.attrs["uniform"] = 1.0 / k
    out.attrs["tv_from_uniform"] = float(0.5 * np.abs(fractions - 1.0 / k).sum())
    return out
