"""How detection depends on the share of open samples in the evaluation set.

The evaluation set of the open-set setting is an unlabeled mixture of close and open images.
Its open share is not a property of the method but of the benchmark: FERPlus with Surprise
held out has 57% open rows (all Surprise training images join the test split), the paper's
RAF-DB setting 37%, and a deployment may see a few percent. A post-hoc detector scores each
image on its own, so its AUROC does not depend on the share beyond sampling noise; a
*transductive* detector (tknn, or any detector fitted on the evaluation set) sees the open
population itself and may depend on it strongly. This study makes that visible.

:func:`subsample_open` keeps every close row and draws open rows (seeded, without
replacement) so that open rows are ``fraction`` of the result; a fraction above the set's own
share is refused (it would need close rows dropped, a different study).
:func:`open_fraction_study` re-fits and re-scores detectors on each subsample, ``repeats``
draws per fraction, and returns one row per (fraction, repeat, detector) with AUROC and
FPR@95 from :func:`ferlib.metrics.openset_metrics`. Only detectors that read the close-set
model's saved outputs are accepted (seconds per draw); trained detectors would retrain per
draw and belong in stage 03.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ferlib.metrics import openset_metrics
from ferlib.openset.data import OpenSetData
from ferlib.openset.registry import detector_class, validate_detectors
from ferlib.openset.scoring import run_detectors

__all__ = ["match_open_share", "open_fraction_study", "subsample_close", "subsample_open", "summarise_fraction_study"]


def subsample_open(is_open: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices (sorted) holding every close row and open rows making up ``fraction``.

    With ``c`` close rows, ``n_open = round(fraction * c / (1 - fraction))`` open rows are
    drawn without replacement (at least one). Raises ``ValueError`` when ``fraction`` is not
    in (0, 1) or asks for more open rows than the set has.
    """
    return _subsample(is_open, fraction, rng, draw_open=True)


def subsample_close(is_open: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices (sorted) holding every open row and close rows drawn (without replacement)
    so that open rows make up ``fraction``: ``n_close = round(n_open * (1 - fraction) /
    fraction)``, at least one. The mirror of :func:`subsample_open`, for raising a set's open
    share; a fraction below the set's own share is refused."""
    return _subsample(is_open, fraction, rng, draw_open=False)


def _subsample(is_open: np.ndarray, fraction: float, rng: np.random.Generator, draw_open: bool) -> np.ndarray:
    is_open = np.asarray(is_open, dtype=bool)
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"open fraction must be in (0, 1), got {fraction!r}")
    close = np.flatnonzero(~is_open)
    open_rows = np.flatnonzero(is_open)
    if len(close) == 0 or len(open_rows) == 0:
        raise ValueError(
            f"the evaluation set needs close and open rows (has {len(close)} close, {len(open_rows)} open)"
        )
    if draw_open:
        kept, pool, what, bound = close, open_rows, "open", "most"
        n = max(1, int(round(fraction * len(close) / (1.0 - fraction))))
    else:
        kept, pool, what, bound = open_rows, close, "close", "least"
        n = max(1, int(round(len(open_rows) * (1.0 - fraction) / fraction)))
    if n > len(pool):
        own = len(open_rows) / len(is_open)
        raise ValueError(
            f"open fraction {fraction:.3f} needs {n} {what} rows but the evaluation set has "
            f"{len(pool)} (its own open share is {own:.3f}); ask for at {bound} that"
        )
    drawn = rng.choice(pool, size=n, replace=False)
    return np.sort(np.concatenate([kept, drawn]))


def match_open_share(is_open: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Row indices (sorted) of a subsample whose open share is ``fraction``: close rows drawn
    when the set's own share is lower (every open row kept), open rows drawn when it is higher
    (every close row kept), every row when it is equal. Why: a tuning set should present a
    transductive detector with the open share of the set it will be reported on; FERPlus's
    validation split holds 1-38% open rows where the reported sets hold 6-84%."""
    is_open = np.asarray(is_open, dtype=bool)
    n_open, n = int(is_open.sum()), len(is_open)
    n_close = n - n_open
    # the subsample each side would give; equal when the counts already match
    if n_open and n_close and round(n_open * (1.0 - fraction) / fraction) == n_close:
        return np.arange(n)
    if n_open / max(n, 1) < fraction:
        return subsample_close(is_open, fraction, rng)
    return subsample_open(is_open, fraction, rng)


def _check_cheap(detectors: Sequence[str]) -> None:
    for name in detectors:
        cls = detector_class(name)
        if cls.needs_images or cls.needs_train_images or cls.trains_networks:
            raise ValueError(
                f"{name} trains on images and would retrain for every draw; the open-fraction study "
                "takes detectors that read the close-set model's saved outputs"
            )


def open_fraction_study(
    data: OpenSetData,
    detectors: Sequence[str],
    fractions: Sequence[float],
    repeats: int = 3,
    seed: int = 0,
    detector_params: Mapping[str, Mapping[str, Any]] | None = None,
    include_full: bool = True,
) -> pd.DataFrame:
    """AUROC and FPR@95 of each detector on open-subsampled copies of ``data``.

    ``data`` is the full evaluation set (stage 02's files under one protocol, labels
    included); detectors see only its label-free view (:func:`run_detectors`). Draw ``r`` of
    fraction ``f`` uses ``np.random.default_rng([seed, round(f * 1e6), r])``, so every draw
    can be repeated alone. With ``include_full`` the whole set is scored once as well
    (``fraction`` = its own open share, ``repeat`` = 0, ``full`` = True).
    """
    detectors = list(detectors)
    validate_detectors(detectors, detector_params)
    _check_cheap(detectors)
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    is_open = data.is_open
    own = float(is_open.mean())
    draws: list[tuple[float, int, bool, np.ndarray]] = []
    for f in fractions:
        for r in range(repeats):
            rng = np.random.default_rng([seed, int(round(float(f) * 1e6)), r])
            draws.append((float(f), r, False, subsample_open(is_open, f, rng)))
    if include_full:
        draws.append((own, 0, True, np.arange(len(data))))
    rows = []
    for f, r, full, index in draws:
        part = data.subset(index)
        results = run_detectors(part, detectors, detector_params or {}, shared={"seed": seed}, log=False)
        truth = part.is_open
        for name in detectors:
            m = openset_metrics(results[name].scores, truth)
            rows.append(
                {
                    "fraction": f,
                    "open_share": float(truth.mean()),
                    "repeat": r,
                    "full": full,
                    "detector": name,
                    "n_close": int((~truth).sum()),
                    "n_open": int(truth.sum()),
                    "auroc": m["auroc"],
                    "fpr95": m["fpr95"],
                }
            )
    return pd.DataFrame(rows)


def summarise_fraction_study(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (ddof 1; NaN for one draw) of AUROC and FPR@95 per (fraction, detector)."""
    grouped = table.groupby(["fraction", "detector"], sort=True)
    out = grouped.agg(
        open_share=("open_share", "mean"),
        draws=("auroc", "size"),
        auroc_mean=("auroc", "mean"),
        auroc_std=("auroc", "std"),
        fpr95_mean=("fpr95", "mean"),
        fpr95_std=("fpr95", "std"),
    )
    return out.reset_index()
