"""Reading finished runs: stage 04's figures and the reproduction tables across runs.

This module never trains and never needs a data set: it reads the files that stages 01-03
wrote (``01_close_set/``, ``02_pseudo_labels/``, ``03_detect/``, ``metrics.csv``,
``manifest.json``) and draws or tabulates them, so a run finished on a GPU machine can be
redrawn on a laptop. :func:`find_runs` is the one place that decides what a finished run is.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ferlib.io import write_npz
from ferlib.manifest import update_manifest
from ferlib.openset.data import TABLE_COLUMNS
from ferlib.params import checked
from ferlib.stages import close_set_chance_warning, load_close_set, load_openset_data, load_scores

# ----------------------------------------------------------------------------- stage 04
#: the scores table's fixed columns; every column after them is a detector's score
SCORE_TABLE_COLUMNS = tuple(TABLE_COLUMNS)
EMBED_METHODS = ("umap", "tsne", "t-sne")


def _detector_columns(scores: pd.DataFrame) -> list[str]:
    """The scores table's detector columns: every numeric column after the fixed ones."""
    cols = [c for c in scores.columns if c not in SCORE_TABLE_COLUMNS]
    return [c for c in cols if pd.api.types.is_numeric_dtype(scores[c]) and not pd.api.types.is_bool_dtype(scores[c])]


def run_seed(run_dir: Path, default: int) -> int:
    """The seed the run was made with (the reference protocol's permutation depends on it)."""
    from ferlib.manifest import read_manifest

    try:
        value = (read_manifest(run_dir).get("params") or {}).get("seed")
        return default if value is None else int(value)
    except (ValueError, TypeError):
        return default


def _align_rows(scores: pd.DataFrame, table: pd.DataFrame, what: str) -> np.ndarray:
    """Positions in ``table`` of the scores table's rows, matched on (origin, source_index)
    (stage 03's ``eval_subset`` may have kept only some evaluation rows)."""

    def key(frame: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays(
            [frame["origin"].astype(str).to_numpy(), frame["source_index"].to_numpy(dtype=np.int64)]
        )

    lookup = pd.Series(np.arange(len(table)), index=key(table))
    rows = lookup.reindex(key(scores)).to_numpy()
    if np.isnan(rows.astype(float)).any():
        missing = int(np.isnan(rows.astype(float)).sum())
        raise ValueError(
            f"{missing} rows of the scores table are not in {what}; was stage 02 re-run "
            "after stage 03? Re-run stage 03."
        )
    return rows.astype(np.int64)


def _suptitle(fig, text: str) -> None:
    """A figure title in the kit's style (9 pt; ``plots.style`` is only active inside plots)."""
    from ferlib import plots

    with plots.style():
        fig.suptitle(text)


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted row positions: all rows, or ``max_points`` drawn without replacement with ``seed``."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


@checked
def visualise(
    run_dir: str = "outputs/lab",
    protocols: Sequence[str] = ("honest", "reference"),
    embed_method: str = "umap",
    embed_max_points: int | None = 3000,
    seed: int = 0,
    results_glob: str | None = None,
    compare: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Redraw every figure of a finished run from its files alone (no model, no data set).

    Writes PNG (300 dpi) + PDF into ``run_dir/figures/``:

    * ``learning_curves``, ``confusion_matrix``: stage 01's history and results, if present;
    * per protocol whose ``03_detect/scores_<protocol>.csv`` exists:
      ``score_histograms_<protocol>`` (a panel per detector column, AUROC under each),
      ``loss_histogram_<protocol>`` (the paper's per-sample loss, column ``cycle``, if present),
      ``roc_curves_<protocol>`` (every detector), ``pseudo_label_spread_<protocol>`` and
      ``embedding_<method>_<protocol>``: the close-set model's evaluation features (as the
      detectors saw them under that protocol) and, when ``detector_features_<protocol>.npy``
      exists, the cycle detector's features side by side, coloured by true class with open
      samples as red crosses. The coordinates go to ``embedding_<method>_<protocol>.npz``.

    Embeddings use ``embed_method`` (``"umap"`` or ``"tsne"``) on at most ``embed_max_points``
    rows drawn with ``seed`` (the same rows in every panel; ``None``: all rows, ``0``: no
    embeddings). The same files and seed give the same figures. Returns the written paths by
    figure name (PNG first, then PDF; the embedding's ``.npz`` third).

    With ``results_glob``, the finished runs it matches are also gathered into the
    reproduction tables (:func:`collect_results`) beside the runs, in ``<run_dir>/../tables/``
    (``outputs/tables`` for the default layout); their files come back as
    ``table_<stem>: [png, pdf, csv, md, tex]``. It is a parameter here, not a notebook-only
    variable, so notebook 04 and ``--executor python`` do the same.

    With ``compare`` (two or more sweeps, each a glob or folder of runs), the sweeps are set side
    by side (:func:`compare_results`) in ``<run_dir>/../tables/``: one row per detector with each
    sweep's honest AUROC, FPR@95 and reference AUROC, headed by its network and input
    (``<dataset>_comparison.md``), and the honest AUROCs as bars (``<dataset>_comparison.png``,
    ``.pdf``); they come back as ``comparison_<dataset>: [png, pdf, md]``.

    Parameters
    ----------
    run_dir : str
        The finished run to draw: the folder holding 01_close_set/, 02_pseudo_labels/, 03_detect/.
    protocols : list[str]
        Protocols to draw ("honest", "reference"); one without a scores file is skipped.
    embed_method : str
        Embedding of the features: "umap" or "tsne" (as in the paper).
    embed_max_points : int or None
        Embed at most this many samples, drawn with seed (None: all rows, 0: no embeddings).
    seed : int
        Seed of the embedding and of its subsample.
    results_glob : str or None
        Runs to gather into the paper's table, e.g. "outputs/ferplus_open-*_seed*"; None: no table.
    compare : list[str] or None
        Sweeps to set side by side, each a glob or folder of runs, e.g. a from-scratch sweep and one from
        face weights; None: no comparison.
    """
    from ferlib import plots

    run = Path(run_dir)
    if compare is not None and (isinstance(compare, str) or len(compare) < 2):
        raise ValueError(f"compare takes a list of two or more sweeps (globs or folders of runs), got {compare!r}")
    method = str(embed_method).lower()
    if method not in EMBED_METHODS:
        raise ValueError(f"embed_method must be 'umap' or 'tsne', got {embed_method!r}")
    method = "tsne" if method == "t-sne" else method
    if isinstance(protocols, str):
        protocols = [protocols]
    detect, pseudo_dir, figures = run / "03_detect", run / "02_pseudo_labels", run / "figures"
    present = [p for p in protocols if (detect / f"scores_{p}.csv").is_file()]
    if not present:
        raise FileNotFoundError(
            f"{detect}: no scores_<protocol>.csv for protocols {list(protocols)}; run stage 03 first"
        )
    skipped = [p for p in protocols if p not in present]
    if skipped:
        print(f"no scores file for protocol(s) {skipped}: skipped")
    written: dict[str, list[Path]] = {}

    def save(fig, name: str) -> None:
        written[name] = plots.save_figure(fig, figures / name)

    # stage 01: learning curves and test confusion matrix
    close_dir = run / "01_close_set"
    if (close_dir / "results.json").is_file() and (
        (close_dir / "history.csv").is_file() or (close_dir / "history.json").is_file()
    ):
        results, history = load_close_set(str(run))
        save(plots.learning_curves(history), "learning_curves")
        if results.get("confusion") is not None and results.get("class_names"):
            save(plots.confusion_matrix_plot(results["confusion"], results["class_names"]), "confusion_matrix")

    metrics_path = run / "metrics.csv"
    metrics = pd.read_csv(metrics_path) if metrics_path.is_file() else None
    warning = close_set_chance_warning(str(run))
    if warning:  # the AUROCs under the histograms would otherwise read as results
        print(f"WARNING: {warning}")
    has_outputs = (pseudo_dir / "pseudo_labels.csv").is_file() and (pseudo_dir / "outputs.npz").is_file()
    if not has_outputs:
        print(f"{pseudo_dir}: no pseudo_labels.csv + outputs.npz; close-set embeddings skipped")
    seed_of_run = run_seed(run, seed)
    cache: dict[tuple, np.ndarray] = {}  # identical features (e.g. both protocols' test rows) embed once

    def embed(features: np.ndarray, labels, is_open) -> np.ndarray:
        import hashlib

        x = np.ascontiguousarray(features, dtype=np.float32)
        key = (hashlib.sha1(x.tobytes()).hexdigest(), x.shape)
        if key not in cache:
            # one thread, as UMAP's n_jobs=1: t-SNE's OpenMP threads make the result depend on
            # the thread count, and on a busy machine they spin-wait (10x slower)
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                cache[key] = plots.embedding(x, labels, is_open, method=method, seed=seed)
        return cache[key]

    for protocol in present:
        scores = load_scores(str(run), protocol)
        detectors = _detector_columns(scores)
        if not detectors:
            print(f"[{protocol}] the scores table has no detector columns")
            continue
        proto_metrics = None
        if metrics is not None and {"detector", "protocol", "auroc"} <= set(metrics.columns):
            proto_metrics = metrics[metrics["protocol"].astype(str) == protocol]
            if "eval_subset" in proto_metrics.columns:  # the full run's rows, not a test-split run's
                proto_metrics = proto_metrics[proto_metrics["eval_subset"].fillna("all").astype(str) == "all"]
            proto_metrics = proto_metrics.drop_duplicates("detector", keep="last")
        fig = plots.score_histograms(scores, detectors, proto_metrics, protocol)
        if fig.legends:  # the close/open legend sits on top: name the protocol there
            with plots.style():
                fig.legends[0].set_title(f"{protocol} protocol")
        save(fig, f"score_histograms_{protocol}")
        if "cycle" in detectors:
            fig = plots.loss_histogram(scores, "cycle")
            _suptitle(fig, f"cycle detector, {protocol} protocol")
            save(fig, f"loss_histogram_{protocol}")
        fig = plots.roc_curves(scores, detectors)
        _suptitle(fig, f"{protocol} protocol")
        save(fig, f"roc_curves_{protocol}")

        panels_features: dict[str, np.ndarray] = {}
        if has_outputs:
            data = load_openset_data(str(run), protocol, seed=seed_of_run)
            rows = _align_rows(scores, data.table, pseudo_dir / "pseudo_labels.csv")
            if data.class_names and (data.table["is_open"].any()):
                fig = plots.pseudo_label_spread(data.table.iloc[rows], list(data.class_names))
                _suptitle(fig, f"{protocol} protocol")
                save(fig, f"pseudo_label_spread_{protocol}")
            panels_features["close-set model (baseline)"] = data.features[rows]
        features_path = detect / f"detector_features_{protocol}.npy"
        if features_path.is_file():
            cycle_features = np.load(features_path)
            if len(cycle_features) == len(scores):
                panels_features["cycle detector (paper's method)"] = cycle_features
            else:
                print(f"{features_path}: {len(cycle_features)} rows for {len(scores)} scores; not embedded")
        if not panels_features or embed_max_points == 0:
            continue
        idx = _subsample(len(scores), embed_max_points, seed)
        labels = scores["label"].to_numpy()[idx]
        is_open = scores["is_open"].to_numpy(dtype=bool)[idx]
        t0 = time.perf_counter()
        coords = {title: embed(f[idx], labels, is_open) for title, f in panels_features.items()}
        name = f"embedding_{method}_{protocol}"
        if len(coords) == 1:
            ((title, xy),) = coords.items()
            fig = plots.embedding_plot(xy, labels, is_open, title=f"{title}, {protocol} protocol")
        else:
            fig = plots.embedding_comparison(coords, labels, is_open)
            _suptitle(
                fig, f"{'UMAP' if method == 'umap' else 't-SNE'} of {len(idx)} evaluation samples, {protocol} protocol"
            )
        save(fig, name)
        npz = figures / f"{name}.npz"
        arrays = {
            "index": scores["index"].to_numpy()[idx],
            "label": labels,
            "is_open": is_open,
            "titles": np.array(list(coords)),
            "method": np.array(method),
            "seed": np.array(seed),
            **{f"coords_{k}": xy for k, xy in enumerate(coords.values())},
        }
        write_npz(npz, arrays)
        written[name].append(npz)
        print(f"[{protocol}] {method} of {len(idx)} samples x {len(coords)} panel(s): {time.perf_counter() - t0:.1f} s")
    update_manifest(
        run_dir,
        visualise={
            "figures": sorted(written),
            "embed_method": method,
            "embed_max_points": embed_max_points,
            "seed": seed,
        },
    )
    print(f"wrote {len(written)} figures to {figures}")
    if results_glob:
        tables_dir = run.parent / "tables"  # beside the runs: outputs/tables by default
        for stem in collect_results(results_glob, out_dir=str(tables_dir)):
            written[f"table_{stem}"] = [tables_dir / f"{stem}.{ext}" for ext in ("png", "pdf", "csv", "md", "tex")]
    if compare:
        tables_dir = run.parent / "tables"
        for dataset in compare_results(dict(zip(sweep_labels(compare), compare)), out_dir=str(tables_dir)):
            written[f"comparison_{dataset}"] = [
                tables_dir / f"{dataset}_comparison.{ext}" for ext in ("png", "pdf", "md")
            ]
    return written


def sweep_labels(items: Sequence) -> list[str]:
    """Headings of sweeps set side by side (:func:`sweep_label` of each, named by the folder
    its glob searches); numbered when two would read the same, so none hides another."""
    labels = [sweep_label(item, _folder_name(item)) for item in items]
    if len(set(labels)) < len(labels):
        labels = [f"{k + 1}. {label}" for k, label in enumerate(labels)]
    return labels


def sweep_folder(item) -> Path:
    """The folder a sweep's glob searches (``outputs/face/ferplus_open-*`` -> ``outputs/face``),
    or the folder itself when ``item`` is no glob."""
    text = str(item)
    cut = min((i for i in (text.find(ch) for ch in "*?[") if i >= 0), default=len(text))
    return Path(text[:cut]) if cut == len(text) or text[:cut].endswith("/") else Path(text[:cut]).parent


def _folder_name(item) -> str:
    """The name of the folder a sweep's glob searches (:func:`sweep_folder`)."""
    return sweep_folder(item).name or str(item)


def find_runs(runs_glob) -> list[Path]:
    """Run folders holding metrics.csv and a manifest with dataset, open class and seed.

    ``runs_glob``: a glob of run folders, a run folder, a folder of run folders, or a list of
    these. Folders without metrics.csv (unfinished runs, caches, tables) are skipped.
    """
    import glob as _glob
    import os

    from ferlib.manifest import read_manifest
    from ferlib.tables import open_short

    items = [runs_glob] if isinstance(runs_glob, (str, os.PathLike)) else list(runs_glob)
    candidates: list[Path] = []
    for item in items:
        text = os.fspath(item)
        wildcard = any(ch in text for ch in "*?[")
        for p in [Path(m) for m in sorted(_glob.glob(text, recursive=True))] if wildcard else [Path(text)]:
            if p.is_file() and p.name == "metrics.csv":
                p = p.parent
            if (p / "metrics.csv").is_file():
                candidates.append(p)
            elif p.is_dir() and not wildcard:  # a sweep folder: the runs below it
                candidates.extend(sorted(m.parent for m in p.rglob("metrics.csv")))
    runs, skipped = [], []
    for p in dict.fromkeys(c.resolve() for c in candidates):
        try:
            params = read_manifest(p).get("params") or {}
            if any(params.get(k) is None for k in ("dataset", "open_class", "seed")):
                raise ValueError("manifest params lack dataset, open_class or seed")
            open_short(params["open_class"])
            if pd.read_csv(p / "metrics.csv").empty:
                raise ValueError("metrics.csv has no rows")
        except (ValueError, TypeError, OSError) as exc:
            skipped.append(f"{p} ({exc})")
            continue
        runs.append(p)
    if skipped:
        print(f"skipped {len(skipped)} run(s):\n  " + "\n  ".join(skipped))
    return runs


def collect_results(
    runs_glob="outputs/*",
    out_dir: str = "outputs/tables",
    metrics=("auroc", "fpr95"),
    detectors: Sequence[str] | None = None,
) -> dict[str, pd.DataFrame]:
    """The reproduction tables of many finished runs (e.g. a sweep).

    Gathers every run under ``runs_glob`` that has a ``metrics.csv`` (others are skipped) with
    :func:`ferlib.tables.collect_runs` and writes one summary table per data set, protocol and
    metric (rows: open classes + mean; columns: detectors as mean ± std over seeds, and the
    paper's numbers) as ``<dataset>_<metric>_<protocol>.{csv,md,tex}`` into ``out_dir`` (a run
    whose close-set model is near chance on validation is named in a warning under the Markdown
    and LaTeX tables that hold it, and printed), and
    the same table as a bar chart (:func:`ferlib.plots.per_class_summary`, ``.png`` / ``.pdf``),
    and per data set one row per detector (``<dataset>_overview.md``,
    :func:`ferlib.tables.overview_markdown`: honest AUROC per class, FPR@95, reference AUROC). Runs
    of the ``eval_subset="test"`` ablation get their own tables (stem suffix ``_test``).
    ``detectors``: only these detectors' columns, in the runs' order (a readable figure of a
    20-detector sweep); a name no run scored is refused.
    Returns the summary frames by file stem.
    """
    from ferlib.io import write_csv, write_text
    from ferlib.plots import per_class_summary, save_figure
    from ferlib.published import canonical_dataset
    from ferlib.tables import (
        collect_runs,
        overview_markdown,
        plain_markdown,
        run_warnings,
        summary_table,
        write_tables,
    )

    if isinstance(metrics, str):
        metrics = [metrics]
    runs = find_runs(runs_glob)
    if not runs:
        raise ValueError(f"no finished run (a folder with metrics.csv and manifest.json) for {runs_glob!r}")
    frame = collect_runs(runs)
    if detectors is not None:
        missing = sorted(set(detectors) - set(frame["detector"].astype(str)))
        if missing:
            raise ValueError(f"detectors {missing} were not scored by the runs of {runs_glob!r}")
        frame = frame[frame["detector"].astype(str).isin(list(detectors))]
    for line in run_warnings(frame):  # also under each table that holds the run
        print(f"WARNING: {line}")
    if "eval_subset" not in frame.columns:
        frame["eval_subset"] = "all"
    frame["eval_subset"] = frame["eval_subset"].fillna("all").astype(str)
    frame["dataset"] = frame["dataset"].map(canonical_dataset)
    tables: dict[str, pd.DataFrame] = {}
    for (dataset, subset), group in frame.groupby(["dataset", "eval_subset"], sort=True):
        for protocol in dict.fromkeys(group["protocol"].astype(str)):
            for metric in metrics:
                summary = summary_table(group, metric, protocol, dataset=dataset)
                stem = f"{dataset}_{metric}_{protocol}" + ("" if subset == "all" else f"_{subset}")
                write_tables(summary, out_dir, stem)
                save_figure(per_class_summary(summary), Path(out_dir) / stem)
                tables[stem] = summary
        suffix = "" if subset == "all" else f"_{subset}"
        honest = tables.get(f"{dataset}_auroc_honest{suffix}")
        if honest is not None:  # the by-detector overview (ferlib.tables.overview_markdown)
            text = overview_markdown(
                honest,
                tables.get(f"{dataset}_fpr95_honest{suffix}"),
                tables.get(f"{dataset}_auroc_reference{suffix}"),
            )
            write_text(Path(out_dir) / f"{dataset}_overview{suffix}.md", text)
    for dataset, spread in spread_summary(runs).items():  # how the open rows' pseudo labels spread
        write_csv(Path(out_dir) / f"{dataset}_pseudo_label_spread.csv", spread)
        write_text(Path(out_dir) / f"{dataset}_pseudo_label_spread.md", plain_markdown(spread) + "\n")
    n_classes = frame["open_class"].nunique()
    print(f"{len(runs)} runs ({n_classes} open classes) -> {len(tables)} tables in {out_dir}")
    return tables


def compare_results(groups: dict[str, object], out_dir: str = "outputs/tables") -> dict[str, str]:
    """Sweeps side by side (e.g. the same table from scratch and from face weights): each
    group's tables as :func:`collect_results` writes them, into ``out_dir/<name>/`` (the label's
    name part, :func:`_folder_slug`; numbered where two would share a folder), and per
    data set every group holds ``<dataset>_comparison.md`` in ``out_dir`` (one row per detector,
    :func:`ferlib.tables.comparison_markdown`). ``groups``: label -> runs (as
    :func:`collect_results` takes them). Returns the comparison texts by data set."""
    from ferlib.io import write_text
    from ferlib.plots import grouped_bars, save_figure
    from ferlib.tables import comparison_markdown

    folders = [_folder_slug(label) for label in groups]
    if len(set(folders)) < len(folders):  # two sweeps' folders of one name: number them
        folders = [f"{k + 1}_{folder}" for k, folder in enumerate(folders)]
    tables = {
        label: collect_results(runs, out_dir=str(Path(out_dir) / folder))
        for (label, runs), folder in zip(groups.items(), folders)
    }
    datasets = set.intersection(
        *({k.split("_auroc_honest")[0] for k in t if k.endswith("_auroc_honest")} for t in tables.values())
    )
    texts = {}
    for dataset in sorted(datasets):
        parts = {
            label: {
                "auroc": t[f"{dataset}_auroc_honest"],
                "fpr95": t.get(f"{dataset}_fpr95_honest"),
                "reference": t.get(f"{dataset}_auroc_reference"),
            }
            for label, t in tables.items()
        }
        texts[dataset] = comparison_markdown(parts)
        write_text(Path(out_dir) / f"{dataset}_comparison.md", texts[dataset])
        fig = grouped_bars(
            comparison_long({label: p["auroc"] for label, p in parts.items()}),
            x="detector",
            series="sweep",
            ylabel="AUROC, honest protocol",
            title="mean over open classes ± std over seeds",
            chance=0.5,
        )
        save_figure(fig, Path(out_dir) / f"{dataset}_comparison")
        print(f"{dataset}: {len(parts)} sweeps side by side -> {Path(out_dir) / f'{dataset}_comparison.md'}")
    return texts


def _folder_slug(label: str) -> str:
    """A comparison's sub-folder for one sweep: its label's name part (before the settings in
    brackets, :func:`sweep_label`) with anything but letters, digits, ``.``, ``-`` and ``_``
    made ``_``: ``1. face (dlibface, 112 px, ...)`` -> ``1._face``."""
    import re

    return re.sub(r"[^\w.-]+", "_", label.split(" (")[0]).strip("_") or "sweep"


def comparison_long(summaries: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Several sweeps' summary tables (:func:`ferlib.tables.summary_table`, one metric and
    protocol) in long form for :func:`ferlib.plots.grouped_bars`: one row per sweep and detector
    with the mean over open classes and its std over seeds (columns ``detector``, ``sweep``,
    ``mean``, ``std``); detectors ranked by the first sweep's mean, then those only later sweeps
    scored."""
    from ferlib.tables import _parts

    rows = []
    for label, summary in summaries.items():
        detectors, _ = _parts(summary)
        for det in detectors:
            rows.append(
                {
                    "detector": det,
                    "sweep": label,
                    "mean": float(summary.at["mean", f"{det}:mean"]),
                    "std": float(summary.at["mean", f"{det}:std"]),
                }
            )
    frame = pd.DataFrame(rows, columns=["detector", "sweep", "mean", "std"])
    if frame.empty:
        return frame
    first = frame[frame["sweep"] == next(iter(summaries))].sort_values("mean", ascending=False)["detector"]
    order = list(dict.fromkeys([*first, *frame["detector"]]))
    frame["rank"] = frame["detector"].map({d: i for i, d in enumerate(order)})
    return frame.sort_values(["rank"], kind="stable").drop(columns="rank").reset_index(drop=True)


def sweep_label(runs_glob, name: str) -> str:
    """A sweep's heading in a comparison: ``name`` (its folder, say) and the settings of its
    close-set model (network, starting weights, input size, epochs, training-set cap) read from
    the first run's stage 01 record (:func:`ferlib.tables.settings_label`); ``name`` alone when
    no run has one."""
    from ferlib.manifest import read_manifest
    from ferlib.tables import settings_label

    for run in find_runs(runs_glob):
        settings = ((read_manifest(run).get("stages") or {}).get("01_train_close_set") or {}).get("params")
        if settings:
            return settings_label(name, settings)
    return name


def spread_summary(runs: Sequence[Path]) -> dict[str, pd.DataFrame]:
    """Per data set and open class, how the open rows' pseudo labels spread over the close
    classes (stage 02's ``spread.csv``, honest protocol): the total-variation distance from a
    uniform spread (0: symmetric noise, as the open-set paper assumes; 1 - 1/K: every open row
    on one class), mean ± std over seeds, and the close class most open rows go to with its
    mean share. Runs without ``spread.csv`` are left out; a data set with none has no table."""
    from ferlib.manifest import read_manifest
    from ferlib.published import canonical_dataset
    from ferlib.tables import open_short

    rows = []
    for run in runs:
        path = Path(run) / "02_pseudo_labels" / "spread.csv"
        if not path.is_file():
            continue
        params = read_manifest(run).get("params") or {}
        spread = pd.read_csv(path)
        top = spread.loc[spread["fraction"].idxmax()]
        rows.append(
            {
                "dataset": canonical_dataset(params["dataset"]),
                "open_class": open_short(params["open_class"]),
                "seed": params.get("seed"),
                "tv_from_uniform": float(spread["tv_from_uniform"].iloc[0]),
                "top_class": str(top["class"]),
                "top_share": float(top["fraction"]),
                "close_classes": len(spread),
            }
        )
    out: dict[str, pd.DataFrame] = {}
    if not rows:
        return out
    frame = pd.DataFrame(rows)
    for dataset, group in frame.groupby("dataset", sort=True):
        table = []
        for open_class, g in group.groupby("open_class", sort=False):
            tv, n = g["tv_from_uniform"], len(g)
            top = g["top_class"].mode().iloc[0]
            table.append(
                {
                    "open class": open_class,
                    "seeds": n,
                    "TV from uniform": f"{tv.mean():.3f}" + (f" ± {tv.std(ddof=1):.3f}" if n > 1 else ""),
                    "most open rows go to": top,
                    "its share": f"{g.loc[g['top_class'] == top, 'top_share'].mean():.2f}",
                    "uniform share": f"{1 / g['close_classes'].iloc[0]:.2f}",
                }
            )
        out[dataset] = pd.DataFrame(table)
    return out
