"""The published numbers of open-set FER (Zhang et al., AAAI 2024), as data.

Source: the README of the paper's repository, as transcribed in
``../shared/reference/METHODS.md`` (beside the repository) ("Published table"). Methods: ``Base`` = the close-set
model's max logit/softmax, ``EOW`` (likely EOW-Softmax, ICCV 2021: unverified), ``PROS`` =
PROSER (CVPR 2021), ``DIAS`` (ECCV 2022), ``Ours`` = the paper's method. Values are rounded to
three decimals as published; means are the paper's own, not recomputed.

Layout: ``PUBLISHED[dataset][metric][method][open class short name]`` with open classes
``Sur, Fea, Dis, Hap, Sad, Ang, Neu`` and ``mean``. The RAF-DB FPR@TPR95 table only has the
means and the per-class row of ``Ours``; absent cells are absent keys (NaN in frames).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

__all__ = [
    "OPEN_ORDER",
    "ROW_ORDER",
    "METHODS",
    "HIGHER_IS_BETTER",
    "PUBLISHED",
    "canonical_dataset",
    "published_frame",
    "published_value",
]

#: Open classes in the paper's table order (short names, ``Emotion.short``).
OPEN_ORDER: tuple[str, ...] = ("Sur", "Fea", "Dis", "Hap", "Sad", "Ang", "Neu")
#: Rows of a published table: the open classes then their mean.
ROW_ORDER: tuple[str, ...] = OPEN_ORDER + ("mean",)
#: Methods in the paper's column order.
METHODS: tuple[str, ...] = ("Base", "EOW", "PROS", "DIAS", "Ours")
#: Direction of each metric.
HIGHER_IS_BETTER: Mapping[str, bool] = MappingProxyType({"auroc": True, "fpr95": False})


def _table(rows: dict[str, tuple[float, ...]]) -> dict[str, dict[str, float]]:
    """Rows open class -> values in METHODS order, turned into method -> open class -> value."""
    return {m: {row: vals[j] for row, vals in rows.items()} for j, m in enumerate(METHODS)}


_RAFDB_AUROC = _table(
    {
        #        Base   EOW    PROS   DIAS   Ours
        "Sur": (0.517, 0.648, 0.806, 0.725, 0.918),
        "Fea": (0.411, 0.577, 0.706, 0.660, 0.907),
        "Dis": (0.473, 0.609, 0.788, 0.728, 0.910),
        "Hap": (0.554, 0.606, 0.695, 0.703, 0.892),
        "Sad": (0.506, 0.654, 0.738, 0.668, 0.911),
        "Ang": (0.450, 0.720, 0.704, 0.734, 0.906),
        "Neu": (0.566, 0.606, 0.803, 0.778, 0.917),
        "mean": (0.497, 0.631, 0.749, 0.714, 0.909),
    }
)

_RAFDB_FPR95 = {
    "Base": {"mean": 0.917},
    "EOW": {"mean": 0.913},
    "PROS": {"mean": 0.811},
    "DIAS": {"mean": 0.858},
    "Ours": {
        "Sur": 0.608,
        "Fea": 0.444,
        "Dis": 0.462,
        "Hap": 0.528,
        "Sad": 0.519,
        "Ang": 0.684,
        "Neu": 0.587,
        "mean": 0.547,
    },
}

_FERPLUS_AUROC = _table(
    {
        #        Base   EOW    PROS   DIAS   Ours
        "Sur": (0.406, 0.641, 0.676, 0.710, 0.933),
        "Fea": (0.370, 0.581, 0.664, 0.634, 0.899),
        "Dis": (0.352, 0.596, 0.771, 0.711, 0.871),
        "Hap": (0.476, 0.645, 0.731, 0.726, 0.855),
        "Sad": (0.413, 0.575, 0.681, 0.665, 0.862),
        "Ang": (0.410, 0.578, 0.798, 0.753, 0.891),
        "Neu": (0.544, 0.529, 0.852, 0.767, 0.864),
        "mean": (0.424, 0.592, 0.739, 0.709, 0.882),
    }
)


def _freeze(d):
    if isinstance(d, dict):
        return MappingProxyType({k: _freeze(v) for k, v in d.items()})
    return d


#: dataset -> metric -> method -> open class -> value (read-only).
PUBLISHED = _freeze(
    {
        "rafdb": {"auroc": _RAFDB_AUROC, "fpr95": _RAFDB_FPR95},
        "ferplus": {"auroc": _FERPLUS_AUROC},
    }
)

_DATASET_ALIASES = {
    "rafdb": "rafdb",
    "raf": "rafdb",
    "rafbasic": "rafdb",
    "rafdbbasic": "rafdb",
    "ferplus": "ferplus",
    "fer+": "ferplus",
    "ferp": "ferplus",
    "fer2013plus": "ferplus",
}


def canonical_dataset(name: str) -> str:
    """``"RAF-DB"``, ``"raf_db"``, ``"rafdb"`` -> ``"rafdb"``; ``"FERPlus"``, ``"FER+"`` ->
    ``"ferplus"``. Other names are returned lower-cased without separators."""
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return _DATASET_ALIASES.get(key, key)


def _metric_table(dataset: str, metric: str):
    ds = canonical_dataset(dataset)
    if ds not in PUBLISHED:
        raise ValueError(f"no published numbers for data set {dataset!r}; available: {sorted(PUBLISHED)}")
    met = str(metric).strip().lower().replace("@", "").replace("_", "")
    met = {"fpr": "fpr95", "fprtpr95": "fpr95", "fpr95": "fpr95", "auroc": "auroc", "auc": "auroc"}.get(met, met)
    if met not in PUBLISHED[ds]:
        raise ValueError(f"no published {metric!r} for {ds}; available: {sorted(PUBLISHED[ds])}")
    return PUBLISHED[ds][met]


def published_frame(dataset: str, metric: str):
    """The published table as a DataFrame: rows ``Sur, Fea, Dis, Hap, Sad, Ang, Neu, mean``
    (index named ``open``), columns ``Base, EOW, PROS, DIAS, Ours``; NaN where the paper gives
    no number. Raises ``ValueError`` for a data set or metric without published numbers."""
    import pandas as pd

    table = _metric_table(dataset, metric)
    frame = pd.DataFrame(
        {m: [table.get(m, {}).get(r, float("nan")) for r in ROW_ORDER] for m in METHODS},
        index=pd.Index(list(ROW_ORDER), name="open"),
        dtype=float,
    )
    frame.columns.name = "method"
    return frame


def published_value(dataset: str, metric: str, method: str, open_class: str) -> float:
    """One published number, NaN when the paper gives none (unknown data set/metric raise)."""
    table = _metric_table(dataset, metric)
    return float(table.get(method, {}).get(open_class, float("nan")))
