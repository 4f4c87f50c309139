"""The paper's reproduction table, from finished runs' files.

``collect_runs`` gathers many runs' ``metrics.csv`` (one run directory each, next to its
``manifest.json``); ``summary_table`` turns them into rows per open class (paper order) plus the
mean, columns per detector with mean ± std over seeds, and the published numbers side by side;
``write_tables`` writes it as CSV, Markdown and LaTeX (booktabs), atomically.
"""

from __future__ import annotations

import glob as _glob
import math
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ferlib.io import read_json, write_csv, write_text
from ferlib.published import (
    HIGHER_IS_BETTER,
    METHODS,
    OPEN_ORDER,
    canonical_dataset,
    published_frame,
)

__all__ = [
    "collect_runs",
    "open_short",
    "summary_table",
    "write_tables",
    "to_markdown",
    "to_latex",
    "overview_markdown",
    "run_warning",
    "run_warnings",
    "warnings_markdown",
]

_RUN_KEYS = ("dataset", "open_class", "seed")


def open_short(value) -> str:
    """An open class as the paper's short name: ``"surprise"``, ``"Sur"``, ``2``,
    ``Emotion.SURPRISE`` -> ``"Sur"``."""
    from ferlib.emotions import parse_emotion

    if isinstance(value, str):
        text = value.strip()
        for short in OPEN_ORDER:
            if text.lower() == short.lower():
                return short
        if text.lstrip("-").isdigit():
            value = int(text)
        else:
            value = text
    elif isinstance(value, (np.integer, float)) and float(value).is_integer():
        value = int(value)
    return parse_emotion(value).short


def settings_label(name: str, settings: Mapping) -> str:
    """A heading for a group of runs set beside another (a sweep, a noisy-label benchmark):
    its folder ``name`` and the settings that tell such groups apart (network and its starting
    weights, input size, epochs, training-set cap), so that "from scratch" and "from face
    weights" read as such in a comparison and not only as two folder names."""
    arch = str(settings.get("arch") or "?")
    if settings.get("pretrained"):
        arch += f" from {settings['pretrained']} weights"
    parts = [arch, f"{settings.get('input_size', '?')} px", f"{settings.get('epochs', '?')} epochs"]
    if settings.get("n_train"):
        parts.append(f"{int(settings['n_train']):,} training images")
    elif isinstance(settings.get("data_options"), Mapping) and settings["data_options"].get("max_train"):
        parts.append(f"{int(settings['data_options']['max_train']):,} training images")
    return f"{name} ({', '.join(parts)})"


def _run_dirs(paths_or_glob) -> list[Path]:
    if isinstance(paths_or_glob, (str, os.PathLike)):
        items = [paths_or_glob]
    else:
        items = list(paths_or_glob)
    found: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if any(ch in text for ch in "*?["):
            matches = [Path(p) for p in sorted(_glob.glob(text, recursive=True))]
        else:
            matches = [Path(text)]
        for p in matches:
            if p.is_file():
                found.append(p.parent)
            elif (p / "metrics.csv").is_file():
                found.append(p)
            elif p.is_dir():  # a sweep folder: every run below it
                found.extend(sorted(m.parent for m in p.rglob("metrics.csv")))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ValueError(f"no run with a metrics.csv found for {paths_or_glob!r}")
    return unique


def run_warning(run: Path, manifest: dict | None = None) -> str | None:
    """The near-chance warning of a run's close-set model (validation accuracy below 1.5 times
    chance, :func:`ferlib.metrics.close_set_warning`), or None: from the manifest, which stage 01
    writes it into, else from ``01_close_set/results.json`` and its history (older runs);
    None without either."""
    close = (manifest or {}).get("close_set") or {}
    if "close_set_warning" in close:
        return close["close_set_warning"]
    from ferlib.stages import close_set_chance_warning  # reads results.json, else the history

    return close_set_chance_warning(str(run))


def collect_runs(paths_or_glob) -> pd.DataFrame:
    """Concatenate many runs' ``metrics.csv``.

    ``paths_or_glob``: a glob pattern (``"results/*/"``, ``"results/**/metrics.csv"``), a run
    directory, a ``metrics.csv`` path, a folder holding run directories, or a list of any of
    these. Each run directory holds ``metrics.csv`` and ``manifest.json`` with at least
    ``{"params": {"dataset", "open_class", "seed"}}``. Adds the columns ``dataset``
    (canonical, e.g. ``rafdb``), ``open_class`` (paper short name, e.g. ``Sur``), ``seed`` and
    ``run`` (the run directory), manifest values overriding same-named metrics columns, and
    ``close_set_warning`` (:func:`run_warning`: text when the run's close-set model is near
    chance on validation, else empty), which the tables print under themselves.
    """
    frames = []
    for run in _run_dirs(paths_or_glob):
        manifest_path = run / "manifest.json"
        if not manifest_path.is_file():
            raise ValueError(f"{run}: no manifest.json next to metrics.csv")
        try:
            manifest = read_json(manifest_path)
            params = manifest["params"]
        except (KeyError, TypeError):
            raise ValueError(f"{manifest_path}: no 'params' object") from None
        except ValueError as exc:
            raise ValueError(f"{manifest_path}: not valid JSON ({exc})") from None
        missing = [k for k in _RUN_KEYS if k not in params or params[k] is None]
        if missing:
            raise ValueError(f"{manifest_path}: params lack {missing}")
        try:
            open_class = open_short(params["open_class"])
        except ValueError as exc:
            raise ValueError(f"{manifest_path}: open_class: {exc}") from None
        frame = pd.read_csv(run / "metrics.csv")
        if frame.empty:
            warnings.warn(f"{run / 'metrics.csv'} has no rows", stacklevel=2)
            continue
        frame["dataset"] = canonical_dataset(params["dataset"])
        frame["open_class"] = open_class
        frame["seed"] = int(params["seed"])
        frame["run"] = str(run)
        frame["close_set_warning"] = run_warning(run, manifest) or ""
        frames.append(frame)
    if not frames:
        raise ValueError(f"every metrics.csv found for {paths_or_glob!r} is empty")
    out = pd.concat(frames, ignore_index=True)
    keys = [c for c in ("dataset", "open_class", "seed", "detector", "protocol", "eval_subset") if c in out]
    dup = out.duplicated(keys, keep=False)
    if dup.any():
        warnings.warn(
            f"{int(dup.sum())} rows share {keys} with another run (the same seed twice?); "
            "summary_table will count them as separate seeds",
            stacklevel=2,
        )
    return out


def _fmt(mean: float, std: float, digits: int) -> str:
    if not np.isfinite(mean):
        return ""
    if np.isfinite(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def summary_table(
    runs_frame: pd.DataFrame,
    metric: str = "auroc",
    protocol: str | None = None,
    *,
    dataset: str | None = None,
    detectors: Sequence[str] | None = None,
    published: bool = True,
    ddof: int = 1,
    digits: int = 3,
) -> pd.DataFrame:
    """The reproduction table for one metric and protocol.

    Rows (index ``open``): the open classes present, in the paper's order (Sur, Fea, Dis, Hap,
    Sad, Ang, Neu), then ``mean``. Columns:

    * ``<detector>``: formatted ``"mean ± std"`` over seeds (just ``"mean"`` with one seed);
    * ``paper:<method>``: the published numbers (:mod:`ferlib.published`), when there are any
      for this data set and metric (NaN where the paper gives none);
    * ``<detector>:mean``, ``<detector>:std`` (``ddof=1``: sample std over seeds, NaN with one
      seed), ``<detector>:n`` (number of seeds).

    The ``mean`` row averages the per-class means over the open classes present; its std is
    the std over seeds of each seed's average over those classes (counting only seeds that ran
    every one of them). Its ``paper:`` cells are the published means when all seven open
    classes are present, else the mean of the published per-class numbers of the classes
    present (NaN where the paper gives no per-class number).

    ``protocol`` and ``dataset`` select rows; each may be left out when the runs hold only one.
    ``attrs`` records metric, protocol, dataset, detectors, higher_is_better and ``warnings``:
    one line per run whose close-set model is near chance (the runs' ``close_set_warning``
    column, :func:`collect_runs`), which the Markdown and LaTeX tables print under themselves.
    """
    df = runs_frame
    need = ["detector", "open_class", "seed", metric]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"runs table lacks column(s) {missing}; columns are {list(df.columns)}")
    if "protocol" in df.columns:
        protocols = list(dict.fromkeys(df["protocol"].astype(str)))
        if protocol is None:
            if len(protocols) > 1:
                raise ValueError(f"runs hold several protocols {protocols}; pass protocol=")
            protocol = protocols[0] if protocols else None
        else:
            df = df[df["protocol"].astype(str) == str(protocol)]
            if df.empty:
                raise ValueError(f"no rows for protocol {protocol!r}; protocols: {protocols}")
    if "dataset" in df.columns:
        datasets = list(dict.fromkeys(df["dataset"].map(canonical_dataset)))
        if dataset is None:
            if len(datasets) > 1:
                raise ValueError(f"runs hold several data sets {datasets}; pass dataset=")
            dataset = datasets[0] if datasets else None
        else:
            df = df[df["dataset"].map(canonical_dataset) == canonical_dataset(dataset)]
            if df.empty:
                raise ValueError(f"no rows for data set {dataset!r}; data sets: {datasets}")
    df = df.assign(open_class=df["open_class"].map(open_short))

    present = set(df["open_class"])
    rows = [c for c in OPEN_ORDER if c in present]
    rows += sorted(present - set(OPEN_ORDER))  # e.g. contempt, after the paper's seven
    if detectors is None:
        detectors = list(dict.fromkeys(df["detector"].astype(str)))
    else:
        detectors = [str(d) for d in detectors]
        absent = [d for d in detectors if d not in set(df["detector"].astype(str))]
        if absent:
            raise ValueError(
                f"detector(s) {absent} not in the runs; detectors: {sorted(set(df['detector'].astype(str)))}"
            )

    numeric: dict[str, dict[str, float]] = {}
    for det in detectors:
        d = df[df["detector"].astype(str) == det]
        means, stds, ns = {}, {}, {}
        for oc in rows:
            v = d.loc[d["open_class"] == oc, metric].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            means[oc] = float(v.mean()) if v.size else math.nan
            stds[oc] = float(v.std(ddof=ddof)) if v.size > ddof else math.nan
            ns[oc] = int(v.size)
        # mean row: average over classes; std over seeds that ran every class
        class_means = np.array([means[oc] for oc in rows])
        means["mean"] = float(class_means.mean()) if np.isfinite(class_means).all() else math.nan
        per_seed = d.pivot_table(index="seed", columns="open_class", values=metric, aggfunc="mean")
        per_seed = per_seed.reindex(columns=rows).dropna()
        seed_avgs = per_seed.mean(axis=1).to_numpy(dtype=float)
        stds["mean"] = float(seed_avgs.std(ddof=ddof)) if seed_avgs.size > ddof else math.nan
        ns["mean"] = int(seed_avgs.size)
        numeric[det] = {"mean": means, "std": stds, "n": ns}

    index = pd.Index(rows + ["mean"], name="open")
    out = pd.DataFrame(index=index)
    for det in detectors:
        out[det] = [_fmt(numeric[det]["mean"][r], numeric[det]["std"][r], digits) for r in index]
    if published and dataset is not None:
        try:
            paper = published_frame(dataset, metric)
        except ValueError:
            paper = None
        if paper is not None:
            for m in METHODS:
                col = paper[m]
                vals = [float(col.get(r, math.nan)) for r in rows]
                if set(OPEN_ORDER) <= set(rows):
                    mean_val = float(col["mean"])
                else:
                    sub = [float(col[r]) for r in rows if r in col.index]
                    mean_val = (
                        float(np.mean(sub)) if sub and len(sub) == len(rows) and np.isfinite(sub).all() else math.nan
                    )
                out[f"paper:{m}"] = vals + [mean_val]
    for det in detectors:
        for part in ("mean", "std", "n"):
            out[f"{det}:{part}"] = [numeric[det][part][r] for r in index]
    out.attrs.update(
        {
            "metric": metric,
            "protocol": protocol,
            "dataset": dataset,
            "detectors": list(detectors),
            "higher_is_better": HIGHER_IS_BETTER.get(metric, True),
            "digits": digits,
            "warnings": run_warnings(df),
        }
    )
    return out


def run_warnings(df: pd.DataFrame) -> list[str]:
    """One line per run of ``df`` whose ``close_set_warning`` is set (open class, seed, run)."""
    if "close_set_warning" not in df.columns:
        return []
    lines = []
    flagged = df[df["close_set_warning"].fillna("").astype(str) != ""]
    for _, row in flagged.drop_duplicates([c for c in ("run", "open_class", "seed") if c in df.columns]).iterrows():
        where = f"open class {row['open_class']}, seed {row['seed']}"
        if "run" in row:
            where += f" ({Path(str(row['run'])).name})"
        lines.append(f"{where}: {row['close_set_warning']}")
    return lines


def warnings_markdown(summary: pd.DataFrame) -> str:
    """The summary's run warnings as Markdown lines to print under its table ("" without any)."""
    lines = summary.attrs.get("warnings") or []
    return "".join(f"\n> **Warning**: {line}\n" for line in lines)


# --------------------------------------------------------------------------------------------
# writing


def _parts(summary: pd.DataFrame):
    detectors = summary.attrs.get("detectors") or [c[: -len(":mean")] for c in summary.columns if c.endswith(":mean")]
    paper = [c for c in summary.columns if str(c).startswith("paper:")]
    return list(detectors), paper


def _best_mask(summary: pd.DataFrame, detectors, paper, higher: bool, bold: str | None, digits: int) -> pd.DataFrame:
    """Boolean frame over detectors + paper columns: the best rounded value of each row."""
    cols = list(detectors) + list(paper)
    mask = pd.DataFrame(False, index=summary.index, columns=cols)
    if bold is None:
        return mask
    if bold not in ("ours", "all"):
        raise ValueError(f"bold must be 'ours', 'all' or None, got {bold!r}")
    candidates = list(detectors) + (list(paper) if bold == "all" else [])
    values = pd.DataFrame(
        {c: (summary[f"{c}:mean"] if c in detectors else summary[c]).astype(float) for c in candidates},
        index=summary.index,
    ).round(digits)
    best = values.max(axis=1) if higher else values.min(axis=1)
    for c in candidates:
        mask[c] = values[c].eq(best) & values[c].notna()
    return mask


def _paper_cell(v: float, digits: int) -> str:
    return "–" if not np.isfinite(v) else f"{v:.{digits}f}"


def plain_markdown(frame: pd.DataFrame) -> str:
    """``frame`` (its columns as they are, cells as text) as a Markdown table: the first column
    left-aligned, the others right-aligned; ``|`` in a cell is escaped."""

    def esc(value: object) -> str:
        return str(value).replace("|", "\\|")

    header = [esc(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * (len(header) - 1)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    return "\n".join(lines)


def to_markdown(summary: pd.DataFrame, *, bold: str | None = "ours", higher_is_better: bool | None = None) -> str:
    """A pipe table of the formatted detector cells and the paper's numbers, best in bold."""
    detectors, paper = _parts(summary)
    digits = int(summary.attrs.get("digits", 3))
    higher = summary.attrs.get("higher_is_better", True) if higher_is_better is None else higher_is_better
    mask = _best_mask(summary, detectors, paper, higher, bold, digits)

    def esc(text) -> str:
        return str(text).replace("|", r"\|")

    header = [summary.index.name or ""] + detectors + paper
    lines = [
        "| " + " | ".join(esc(h) for h in header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for r in summary.index:
        cells = [esc(r)]
        for c in detectors + paper:
            text = summary.at[r, c] if c in detectors else _paper_cell(summary.at[r, c], digits)
            text = text or "–"
            cells.append(f"**{esc(text)}**" if mask.at[r, c] else esc(text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + warnings_markdown(summary)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(summary: pd.DataFrame, *, bold: str | None = "ours", higher_is_better: bool | None = None) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``): our detectors as
    mean $\\pm$ std over seeds, then the paper's numbers; the best of each row in bold."""
    detectors, paper = _parts(summary)
    digits = int(summary.attrs.get("digits", 3))
    higher = summary.attrs.get("higher_is_better", True) if higher_is_better is None else higher_is_better
    mask = _best_mask(summary, detectors, paper, higher, bold, digits)
    nd, npp = len(detectors), len(paper)
    a = summary.attrs
    lines = [
        f"% ferkit reproduction table: metric={a.get('metric')} "
        f"protocol={a.get('protocol')} dataset={a.get('dataset')} "
        f"({'higher' if higher else 'lower'} is better); needs \\usepackage{{booktabs}}",
        r"\begin{tabular}{l" + "c" * (nd + npp) + "}",
        r"\toprule",
    ]
    if npp:
        lines.append(
            f" & \\multicolumn{{{nd}}}{{c}}{{reproduction (mean $\\pm$ std over seeds)}}"
            f" & \\multicolumn{{{npp}}}{{c}}{{paper}} \\\\"
        )
        lines.append(f"\\cmidrule(lr){{2-{nd + 1}}} \\cmidrule(lr){{{nd + 2}-{nd + npp + 1}}}")
    header = [_tex(summary.index.name or "")] + [_tex(d) for d in detectors] + [_tex(p[len("paper:") :]) for p in paper]
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    for r in summary.index:
        if r == "mean":
            lines.append(r"\midrule")
        cells = [_tex(r)]
        for d in detectors:
            m, s = summary.at[r, f"{d}:mean"], summary.at[r, f"{d}:std"]
            if not np.isfinite(m):
                cells.append("--")
                continue
            ms = f"{m:.{digits}f}"
            ms = f"\\mathbf{{{ms}}}" if mask.at[r, d] else ms
            cells.append(f"${ms} \\pm {s:.{digits}f}$" if np.isfinite(s) else f"${ms}$")
        for p in paper:
            v = float(summary.at[r, p])
            if not np.isfinite(v):
                cells.append("--")
            else:
                cells.append(f"$\\mathbf{{{v:.{digits}f}}}$" if mask.at[r, p] else f"${v:.{digits}f}$")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for warning in a.get("warnings") or []:  # typeset under the table, so that it travels with it
        lines.append(r"\par\smallskip{\footnotesize \textbf{Warning}: " + _tex(warning) + "}")
    return "\n".join(lines) + "\n"


def write_tables(
    summary: pd.DataFrame,
    out_dir: str | os.PathLike,
    stem: str,
    *,
    bold: str | None = "ours",
    higher_is_better: bool | None = None,
) -> list[Path]:
    """Write ``<stem>.csv`` (every column, index as ``open``), ``<stem>.md`` and ``<stem>.tex``
    (booktabs) into ``out_dir``, atomically. The best value of each row is bold in Markdown and
    LaTeX: among our detectors (``bold="ours"``), among ours and the paper's (``"all"``), or
    none (``None``); ties are all bold, compared at the printed precision. The direction comes
    from the summary's metric (AUROC higher, FPR lower) unless ``higher_is_better`` is given.
    Returns the three paths."""
    out = Path(out_dir)
    csv = write_csv(out / f"{stem}.csv", summary.reset_index())
    md = write_text(out / f"{stem}.md", to_markdown(summary, bold=bold, higher_is_better=higher_is_better))
    tex = write_text(out / f"{stem}.tex", to_latex(summary, bold=bold, higher_is_better=higher_is_better))
    return [csv, md, tex]


def overview_markdown(
    auroc: pd.DataFrame, fpr95: pd.DataFrame | None = None, reference: pd.DataFrame | None = None
) -> str:
    """The paper's layout turned round, one row per detector: the per-class mean AUROC (best
    of each class in bold), the mean over classes ± its std over seeds, and beside it the mean
    FPR@95 and the other protocol's mean AUROC (each ± std), best AUROC first; then one row per
    published method. Why: with twenty detectors the per-class table is too wide to read, and a
    reader first asks which detector is best, by how much, and at what false-positive rate.

    ``auroc``, ``fpr95`` and ``reference`` are :func:`summary_table` frames of the same runs
    (typically AUROC and FPR@95 under the honest protocol and AUROC under the reference one)."""
    detectors, paper = _parts(auroc)
    digits = int(auroc.attrs.get("digits", 3))
    classes = [r for r in auroc.index if r != "mean"]

    def num(v: float) -> str:
        return f"{v:.{digits}f}".replace("0.", ".", 1) if np.isfinite(v) else "–"

    def pm(summary: pd.DataFrame | None, det: str) -> str:
        if summary is None or f"{det}:mean" not in summary.columns:
            return "–"
        m, sd = float(summary.at["mean", f"{det}:mean"]), float(summary.at["mean", f"{det}:std"])
        return f"{num(m)} ± {num(sd)}" if np.isfinite(sd) else num(m)

    best = _best_mask(auroc, detectors, paper, True, "ours", digits)
    order = sorted(detectors, key=lambda d: -float(np.nan_to_num(auroc.at["mean", f"{d}:mean"], nan=-1.0)))
    protocol = (reference.attrs.get("protocol") if reference is not None else None) or "other protocol"
    header = ["detector", *classes, "mean ± std", "FPR@95 mean ± std", f"{protocol} AUROC mean ± std"]
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * (len(header) - 1)]
    for det in order:
        cells = [num(float(auroc.at[c, f"{det}:mean"])) for c in classes]
        cells = [f"**{t}**" if best.at[c, det] else t for c, t in zip(classes, cells)]
        lines.append("| " + " | ".join([det, *cells, pm(auroc, det), pm(fpr95, det), pm(reference, det)]) + " |")
    for p in paper:
        cells = [num(float(auroc.at[c, p])) for c in [*classes, "mean"]]
        lines.append("| " + " | ".join([p.replace("paper:", "paper: "), *cells, "", ""]) + " |")
    return "\n".join(lines) + "\n" + warnings_markdown(auroc)


def comparison_markdown(groups: Mapping[str, Mapping[str, pd.DataFrame | None]]) -> str:
    """Several sweeps of one data set side by side (e.g. from scratch and from face weights),
    one row per detector: per sweep the honest AUROC, honest FPR@95 and reference AUROC, each the
    mean over open classes ± its std over seeds; detectors in the first sweep's order (best
    honest AUROC first), a detector a sweep did not score left blank; the published means last.

    ``groups``: label -> ``{"auroc": ..., "fpr95": ..., "reference": ...}``, each a
    :func:`summary_table` frame (``auroc`` required)."""
    labels = list(groups)
    if not labels:
        raise ValueError("no sweeps to compare")

    def pm(summary: pd.DataFrame | None, det: str) -> str:
        if summary is None or f"{det}:mean" not in summary.columns:
            return ""
        m, sd = float(summary.at["mean", f"{det}:mean"]), float(summary.at["mean", f"{det}:std"])
        text = f"{m:.3f}".replace("0.", ".", 1)
        return text + (f" ± {sd:.3f}".replace("0.", ".", 1) if np.isfinite(sd) else "")

    order: list[str] = []
    for label in labels:
        auroc = groups[label]["auroc"]
        detectors, _ = _parts(auroc)
        ranked = sorted(detectors, key=lambda d: -float(np.nan_to_num(auroc.at["mean", f"{d}:mean"], nan=-1.0)))
        order += [d for d in ranked if d not in order]
    header = ["detector"]
    for label in labels:
        header += [f"{label}: honest AUROC", f"{label}: FPR@95", f"{label}: reference AUROC"]
    lines = ["| " + " | ".join(header) + " |", "|:--|" + "--:|" * (len(header) - 1)]
    for det in order:
        cells = [det]
        for label in labels:
            g = groups[label]
            cells += [pm(g.get("auroc"), det), pm(g.get("fpr95"), det), pm(g.get("reference"), det)]
        lines.append("| " + " | ".join(cells) + " |")
    _, paper = _parts(groups[labels[0]]["auroc"])
    reference = groups[labels[0]].get("reference")
    for p in paper:
        cells = [p.replace("paper:", "paper: ")]
        for _ in labels:
            ref = reference.at["mean", p] if reference is not None and p in reference.columns else np.nan
            cells += ["", "", f"{float(ref):.3f}".replace("0.", ".", 1) if np.isfinite(ref) else ""]
        lines.append("| " + " | ".join(cells) + " |")
    classes = {label: [r for r in groups[label]["auroc"].index if r != "mean"] for label in labels}
    notes = "; ".join(f"{label}: {len(c)} open classes" for label, c in classes.items())
    return "\n".join(lines) + f"\n\nMean over open classes ± std over seeds ({notes}).\n"
