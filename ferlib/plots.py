"""Figures, every one redrawable from a finished run's files (no model needed).

Each public function takes data (DataFrames, arrays) and returns a matplotlib ``Figure``;
:func:`save_figure` writes it as PNG (300 dpi) and PDF, atomically, and closes it.

Style: sized for a paper's single column (3.4 in wide; multi-panel figures up to the double
column, 7.0 in), fonts of 7-9 pt, the Okabe-Ito colour-blind-safe palette; close samples are
green and open samples red as in the paper (Okabe-Ito bluish green and vermillion, which stay
apart under the common colour-vision deficiencies), and close/open also differ by line style
or marker so that colour is never the only cue.

Figures are sized exactly (no ``bbox_inches="tight"``), laid out with matplotlib's
constrained layout: a saved PNG is ``width * dpi`` by ``height * dpi`` pixels.

In a notebook, ``save_figure`` closes the figure: ``display(fig)`` first (or pass
``close=False``) to also show it in the output.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ferlib.io import atomic_write
from ferlib.metrics import _as_open_mask, openset_metrics, pseudo_label_spread_table

__all__ = [
    "SINGLE_COLUMN",
    "DOUBLE_COLUMN",
    "DPI",
    "CLOSE_COLOUR",
    "OPEN_COLOUR",
    "PALETTE",
    "style",
    "save_figure",
    "score_histograms",
    "loss_histogram",
    "roc_curves",
    "embedding",
    "embedding_plot",
    "embedding_comparison",
    "learning_curves",
    "confusion_matrix_plot",
    "pseudo_label_spread_table",
    "pseudo_label_spread",
    "per_class_summary",
    "suptitle",
    "accuracy_vs_noise",
    "flip_histograms",
    "attention_maps",
]

SINGLE_COLUMN = 3.4  # inches
DOUBLE_COLUMN = 7.0  # inches
DPI = 300

# Okabe & Ito (2008), colour-blind safe.
OKABE_ITO = {
    "blue": "#0072B2",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
    "yellow": "#F0E442",
    "black": "#000000",
}
CLOSE_COLOUR = OKABE_ITO["green"]
OPEN_COLOUR = OKABE_ITO["vermillion"]
#: Colours for detectors / series (all eight Okabe-Ito colours).
PALETTE: tuple[str, ...] = tuple(
    OKABE_ITO[k] for k in ("blue", "orange", "green", "vermillion", "purple", "sky", "black", "yellow")
)
#: Colours for close classes in embeddings: green and vermillion are left out (close/open).
CLASS_PALETTE: tuple[str, ...] = tuple(OKABE_ITO[k] for k in ("blue", "orange", "sky", "purple", "black", "yellow")) + (
    "#999999",
)
LINESTYLES: tuple = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 1)))

_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "patch.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType, editable text in the PDF
    "ps.fonttype": 42,
    "savefig.dpi": DPI,
}


def style():
    """Context manager with the kit's rcParams (fonts 7-9 pt, thin lines, no top/right spine)."""
    return matplotlib.rc_context(_RC)


def _styled(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with style():
            return func(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs):
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, layout="constrained", **kwargs)
    return fig, axes


# --------------------------------------------------------------------------------------------
# saving


#: resolution of the copy a notebook shows inline (the saved PNG keeps ``DPI``)
SHOW_DPI = 110


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (JupyterLab, or papermill executing a notebook)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def save_figure(
    fig: Figure,
    path_without_suffix: str | os.PathLike,
    *,
    dpi: int = DPI,
    close: bool = True,
    show: bool | None = None,
) -> list[Path]:
    """Write ``<path>.png`` (``dpi``) and ``<path>.pdf`` atomically, show it, close the figure.

    ``show`` (default: inside a Jupyter kernel): display the figure inline before it is
    closed, so a notebook shows every figure it saves, wherever in ferlib it is drawn (a
    closed figure would otherwise leave the notebook blank, and papermill's executed copy
    holds the same images).
    A trailing ``.png``/``.pdf`` on the path is dropped (``fig.png`` -> ``fig.png``,
    ``fig.pdf``); other dots are kept (``roc_v1.2`` -> ``roc_v1.2.png``).
    Returns the two paths, PNG first.
    """
    base = Path(path_without_suffix)
    if base.suffix.lower() in (".png", ".pdf"):
        base = base.with_suffix("")
    png = Path(f"{base}.png")
    pdf = Path(f"{base}.pdf")
    with style():
        atomic_write(png, lambda p: fig.savefig(p, format="png", dpi=dpi))
        # no creation date: the same figure gives the same bytes
        atomic_write(pdf, lambda p: fig.savefig(p, format="pdf", metadata={"CreationDate": None}))
    if show if show is not None else in_notebook():
        # PNG bytes rather than the figure object: the figure formatter exists only under
        # matplotlib's inline backend, and a kernel started with MPLBACKEND=Agg (CI) has none
        import io

        from IPython.display import Image, display

        buffer = io.BytesIO()
        with style():
            fig.savefig(buffer, format="png", dpi=SHOW_DPI)
        display(Image(data=buffer.getvalue()))
    if close:
        plt.close(fig)
    return [png, pdf]


def suptitle(fig: Figure, text: str) -> None:
    """A figure title in the kit's style (9 pt), for titles added after a plot function returned."""
    with style():
        fig.suptitle(text)


# --------------------------------------------------------------------------------------------
# helpers


def _detector_names(detectors) -> dict[str, str]:
    """``["msp", ...]`` or ``{"msp": "MSP", ...}`` -> {column: display name}."""
    if isinstance(detectors, str):
        detectors = [detectors]
    if isinstance(detectors, Mapping):
        names = {str(k): str(v) for k, v in detectors.items()}
    else:
        names = {str(d): str(d) for d in detectors}
    if not names:
        raise ValueError("no detectors given")
    return names


def _columns(frame, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not in the table; columns are {list(frame.columns)}")


#: markers of the line plots' series, in order (colours from PALETTE, styles from LINESTYLES)
SERIES_MARKERS: tuple[str, ...] = ("o", "s", "^", "v", "D", "P", "X", "*")


def _series(ax, j: int, x, mean, std, label: str) -> None:
    """Series ``j`` of a line plot: mean with the std as error bars (none when all zero/NaN),
    the j-th colour, line style and marker, so that series stay apart in grey print too."""
    std = np.nan_to_num(np.asarray(std, dtype=float))
    ax.errorbar(
        np.asarray(x, dtype=float),
        np.asarray(mean, dtype=float),
        yerr=std if std.any() else None,
        color=PALETTE[j % len(PALETTE)],
        linestyle=LINESTYLES[j % len(LINESTYLES)],
        marker=SERIES_MARKERS[j % len(SERIES_MARKERS)],
        markersize=3,
        capsize=1.5,
        elinewidth=0.6,
        label=label,
    )


def _auroc_from(metrics, detector: str, protocol: str | None) -> float | None:
    """The AUROC of ``detector`` from a metrics table or mapping, None when absent."""
    if metrics is None:
        return None
    if isinstance(metrics, Mapping):
        value = metrics.get(detector)
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = value.get("auroc")
        return None if value is None else float(value)
    rows = metrics[metrics["detector"] == detector]
    if protocol is not None and "protocol" in rows.columns:
        rows = rows[rows["protocol"] == protocol]
    if len(rows) == 0:
        return None
    if len(rows) > 1:
        raise ValueError(
            f"{len(rows)} metrics rows for detector {detector!r}"
            + ("" if protocol is not None else "; pass protocol= to pick one")
        )
    return float(rows["auroc"].iloc[0])


def _hist_pair(
    ax, s: np.ndarray, is_open: np.ndarray, bins, labels: bool, names: Sequence[str] = ("close", "open")
) -> None:
    """Density histograms of ``s`` for the rows outside and inside ``is_open`` (named ``names``)."""
    edges = np.histogram_bin_edges(s, bins=bins)
    for mask, colour, ls, name in ((~is_open, CLOSE_COLOUR, "-", names[0]), (is_open, OPEN_COLOUR, "--", names[1])):
        if not mask.any():
            continue
        ax.hist(
            s[mask], bins=edges, density=True, color=colour, alpha=0.45, linewidth=0, label=name if labels else None
        )
        ax.hist(s[mask], bins=edges, density=True, histtype="step", color=colour, linestyle=ls, linewidth=0.8)


def _close_open_handles(names: Sequence[str] = ("close", "open")) -> list:
    """Legend patches showing both cues: fill colour and outline style."""
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=matplotlib.colors.to_rgba(c, 0.45), edgecolor=c, linestyle=ls, linewidth=0.8, label=name)
        for c, ls, name in ((CLOSE_COLOUR, "-", names[0]), (OPEN_COLOUR, "--", names[1]))
    ]


def _label_name(label, class_names) -> str:
    if class_names is None:
        from ferlib.emotions import Emotion

        try:
            return Emotion(int(label)).label
        except ValueError:
            return str(label)
    if isinstance(class_names, Mapping):
        if label in class_names:
            return str(class_names[label])
        raise KeyError(label)
    idx = int(label)
    if 0 <= idx < len(class_names):
        return str(class_names[idx])
    raise KeyError(label)


# --------------------------------------------------------------------------------------------
# score distributions and ROC


@_styled
def score_histograms(
    scores_frame,
    detectors,
    metrics=None,
    protocol: str | None = None,
    *,
    bins: int | str = 40,
    ncols: int | None = None,
) -> Figure:
    """Density histograms of each detector's score, close (green) vs open (red).

    One panel per detector, its AUROC written under the panel. ``detectors`` is a list of
    score columns or a mapping {column: display name}. The AUROC comes from ``metrics`` (a
    :func:`ferlib.metrics.metrics_table` frame, filtered by ``protocol`` when given, or a mapping
    {detector: auroc}) when it holds the detector, else it is computed with
    :func:`ferlib.metrics.openset_metrics`. One or two panels fit the single column; more use
    the double column, up to four per row.
    """
    names = _detector_names(detectors)
    _columns(scores_frame, list(names) + ["is_open"])
    is_open = _as_open_mask(scores_frame["is_open"].to_numpy())
    n = len(names)
    ncols = ncols or (n if n <= 2 else min(n, 4))
    nrows = math.ceil(n / ncols)
    width = SINGLE_COLUMN if ncols <= 2 else DOUBLE_COLUMN
    fig, axes = _figure(width, 0.4 + 1.6 * nrows, nrows, ncols)
    for k, (ax, (col, name)) in enumerate(zip(axes.flat, names.items())):
        s = scores_frame[col].to_numpy(dtype=float)
        auroc = _auroc_from(metrics, col, protocol)
        if auroc is None:
            auroc = openset_metrics(s, is_open)["auroc"]
        finite = np.isfinite(s)
        _hist_pair(ax, s[finite], is_open[finite], bins, labels=(k == 0))
        ax.set_title(name)
        ax.set_xlabel(f"score (higher = open)\nAUROC = {auroc:.3f}")
        if k % ncols == 0:
            ax.set_ylabel("density")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.legend(handles=_close_open_handles(), loc="outside upper center", ncols=2)
    return fig


@_styled
def loss_histogram(
    scores_frame,
    column: str,
    *,
    bins: int | str = 50,
    xlabel: str = "per-sample loss (CE vs pseudo label)",
    log_y: bool = False,
) -> Figure:
    """Histogram of the paper's per-sample loss (column ``column``), close vs open, with the
    AUROC of the loss as an open-set score."""
    _columns(scores_frame, [column, "is_open"])
    is_open = _as_open_mask(scores_frame["is_open"].to_numpy())
    s = scores_frame[column].to_numpy(dtype=float)
    auroc = openset_metrics(s, is_open)["auroc"]
    fig, axes = _figure(SINGLE_COLUMN, 2.2)
    ax = axes[0, 0]
    _hist_pair(ax, s[np.isfinite(s)], is_open[np.isfinite(s)], bins, labels=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if log_y:
        ax.set_yscale("log")
    ax.legend(handles=_close_open_handles(), title=f"AUROC = {auroc:.3f}", loc="upper right")
    return fig


@_styled
def roc_curves(scores_frame, detectors, *, mark_tpr: float | None = 0.95) -> Figure:
    """ROC curves of all detectors in one plot, close set positive (TPR = close accepted, FPR =
    open accepted), AUROC in the legend, chance diagonal, and a dotted line at ``mark_tpr``."""
    names = _detector_names(detectors)
    _columns(scores_frame, list(names) + ["is_open"])
    is_open = _as_open_mask(scores_frame["is_open"].to_numpy())
    fig, axes = _figure(SINGLE_COLUMN, 3.0)
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=0.8, label="chance")
    if mark_tpr is not None:
        ax.axhline(mark_tpr, color="#BBBBBB", linestyle=(0, (1, 2)), linewidth=0.6)
    for k, (col, name) in enumerate(names.items()):
        s = scores_frame[col].to_numpy(dtype=float)
        auroc = openset_metrics(s, is_open)["auroc"]
        fpr, tpr, _ = roc_curve((~is_open).astype(int), -s)
        ax.plot(
            fpr,
            tpr,
            color=PALETTE[k % len(PALETTE)],
            linestyle=LINESTYLES[k % len(LINESTYLES)],
            label=f"{name} ({auroc:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_aspect("equal")
    ax.set_xlabel("FPR (open samples accepted)")
    ax.set_ylabel("TPR (close samples accepted)")
    ax.legend(title="detector (AUROC)", loc="lower right")
    return fig


# --------------------------------------------------------------------------------------------
# embeddings


def embedding(
    features: np.ndarray,
    labels=None,
    is_open=None,
    class_names=None,
    method: str = "umap",
    seed: int = 0,
    *,
    pca: int | None = 50,
    n_neighbors: int = 15,
    perplexity: float = 30.0,
    max_iter: int | None = None,
) -> np.ndarray:
    """A deterministic 2-D embedding (``n x 2`` float array) of ``features`` (``n x d``).

    ``method="umap"`` (``umap.UMAP(random_state=seed)``, single-threaded, which is what makes
    it reproducible) or ``"tsne"`` (``sklearn.manifold.TSNE(random_state=seed, init="pca")``,
    the paper's choice). Features with more than ``pca`` dimensions are first reduced by an
    exact PCA (``pca=None`` to skip). ``labels``, ``is_open`` and ``class_names`` are only
    checked for length, so that the call mirrors :func:`embedding_plot`. ``max_iter`` caps the
    optimisation (t-SNE ``max_iter``, at least 250; UMAP ``n_epochs``); None keeps the defaults.

    The same features and seed give the identical array on the same machine and library
    versions. The first UMAP call in a process pays numba's JIT compilation (seconds).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (n x d), got shape {x.shape}")
    n = x.shape[0]
    for name, arr in (("labels", labels), ("is_open", is_open)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries for {n} feature rows")
    if n < 5:
        raise ValueError(f"need at least 5 samples for an embedding, got {n}")
    if not np.isfinite(x).all():
        raise ValueError(f"features contain {int((~np.isfinite(x)).sum())} non-finite values")
    if pca is not None and x.shape[1] > pca and n > pca:
        from sklearn.decomposition import PCA

        x = PCA(n_components=pca, svd_solver="full").fit_transform(x).astype(np.float32)
    method = method.lower()
    if method == "umap":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            import umap

            reducer = umap.UMAP(
                n_components=2,
                n_neighbors=min(n_neighbors, n - 1),
                random_state=seed,
                n_jobs=1,
                init="spectral",
                n_epochs=max_iter,
            )
            coords = reducer.fit_transform(x)
    elif method in ("tsne", "t-sne"):
        import inspect

        from sklearn.manifold import TSNE

        extra = {}
        if max_iter is not None:  # scikit-learn < 1.5 calls it n_iter
            key = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"
            extra[key] = int(max_iter)
        coords = TSNE(
            n_components=2, perplexity=min(perplexity, (n - 1) / 3.0), init="pca", random_state=seed, **extra
        ).fit_transform(x)
    else:
        raise ValueError(f"unknown embedding method {method!r}; use 'umap' or 'tsne'")
    return np.asarray(coords, dtype=np.float64)


def _scatter_classes(ax, coords, labels, is_open, class_names, size: float):
    """Close samples coloured by true class, open samples red crosses on top.
    Returns (handles, labels) for a legend."""
    coords = np.asarray(coords, dtype=float)
    labels = np.asarray(labels).reshape(-1)
    is_open = _as_open_mask(is_open)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be n x 2, got shape {coords.shape}")
    if not (coords.shape[0] == labels.shape[0] == is_open.shape[0]):
        raise ValueError(
            f"coords, labels and is_open differ in length: {coords.shape[0]}, {labels.shape[0]}, {is_open.shape[0]}"
        )
    close_classes = [c for c in np.unique(labels[~is_open])]
    for k, c in enumerate(close_classes):
        try:
            name = _label_name(c.item() if hasattr(c, "item") else c, class_names)
        except KeyError:
            raise ValueError(f"close label {c!r} has no entry in class_names") from None
        m = (~is_open) & (labels == c)
        # colour by label value, so a class keeps its colour across figures and open classes
        slot = int(c) if np.issubdtype(type(c), np.integer) else k
        ax.scatter(
            coords[m, 0],
            coords[m, 1],
            s=size,
            color=CLASS_PALETTE[slot % len(CLASS_PALETTE)],
            marker="o",
            linewidths=0,
            alpha=0.7,
            label=name,
            rasterized=True,
        )
    if is_open.any():
        open_labels = np.unique(labels[is_open])
        name = "open"
        if len(open_labels) == 1:
            try:
                name = f"open ({_label_name(open_labels[0].item(), class_names)})"
            except (KeyError, AttributeError):
                pass
        ax.scatter(
            coords[is_open, 0],
            coords[is_open, 1],
            s=size * 1.3,
            color=OPEN_COLOUR,
            marker="x",
            linewidths=0.5,
            alpha=0.8,
            label=name,
            rasterized=True,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "left", "bottom"):
        ax.spines[side].set_visible(True)
    return ax.get_legend_handles_labels()


def _point_size(n: int) -> float:
    return float(np.clip(2000.0 / max(n, 1), 0.8, 8.0))


@_styled
def embedding_plot(coords: np.ndarray, labels, is_open, class_names=None, title: str | None = None) -> Figure:
    """Scatter of a 2-D embedding, close samples coloured by true class, open samples as red
    crosses.

    ``class_names`` maps a label value to its name: a mapping {label: name} or a sequence
    indexed by label value (``class_names[label]``); ``None`` reads labels as canonical
    :class:`ferlib.emotions.Emotion` values. Every close label must have a name.
    """
    fig, axes = _figure(SINGLE_COLUMN, 3.3)
    ax = axes[0, 0]
    handles, names = _scatter_classes(ax, coords, labels, is_open, class_names, _point_size(len(labels)))
    if title:
        ax.set_title(title)
    fig.legend(
        handles, names, loc="outside lower center", ncols=4, markerscale=2.5, handletextpad=0.2, columnspacing=0.8
    )
    return fig


@_styled
def embedding_comparison(panels: Mapping[str, np.ndarray], labels, is_open, class_names=None) -> Figure:
    """Several embeddings of the same samples side by side (the paper's baseline vs ours),
    ``panels`` = {title: coords}; one shared legend. Double column width."""
    if not panels:
        raise ValueError("no panels given")
    fig, axes = _figure(DOUBLE_COLUMN, 3.3 if len(panels) <= 2 else 2.6, 1, len(panels))
    handles = names = None
    for ax, (title, coords) in zip(axes.flat, panels.items()):
        handles, names = _scatter_classes(ax, coords, labels, is_open, class_names, _point_size(len(labels)))
        ax.set_title(title)
    fig.legend(
        handles, names, loc="outside lower center", ncols=8, markerscale=2.5, handletextpad=0.2, columnspacing=0.8
    )
    return fig


# --------------------------------------------------------------------------------------------
# training and classification


@_styled
def learning_curves(history_frame, *, best: str = "auto") -> Figure:
    """Loss (top) and accuracy (bottom) per epoch, train solid and validation dashed, from a
    history table with columns ``epoch, train_loss, train_acc, val_loss, val_acc, lr`` (any of
    the train/val columns may be missing or NaN).

    The best validation epoch (``best="val_acc"``: highest val accuracy; ``"val_loss"``:
    lowest val loss; ``"auto"``: val_acc when present, else val_loss) is marked in both panels.
    """
    h = history_frame
    _columns(h, ["epoch"])
    present = [
        c
        for c in ("train_loss", "val_loss", "train_acc", "val_acc")
        if c in h.columns and np.isfinite(h[c].to_numpy(dtype=float)).any()
    ]
    if not present:
        raise ValueError(
            f"history has none of train_loss, val_loss, train_acc, val_acc with values; columns are {list(h.columns)}"
        )
    epoch = h["epoch"].to_numpy(dtype=float)
    kinds = [k for k in ("loss", "acc") if f"train_{k}" in present or f"val_{k}" in present]
    fig, axes = _figure(SINGLE_COLUMN, 1.2 + 1.1 * len(kinds), len(kinds), 1, sharex=True)
    panels = dict(zip(kinds, axes[:, 0]))
    ax_loss, ax_acc = panels.get("loss"), panels.get("acc")
    series = {"train": (PALETTE[0], "-"), "val": (PALETTE[1], "--")}
    for kind, ax in panels.items():
        for split, (colour, ls) in series.items():
            col = f"{split}_{kind}"
            if col in present:
                ax.plot(
                    epoch,
                    h[col].to_numpy(dtype=float),
                    color=colour,
                    linestyle=ls,
                    marker="o",
                    markersize=1.8,
                    label=split,
                )
        ax.set_ylabel("loss" if kind == "loss" else "accuracy")
    if best == "auto":
        best = "val_acc" if "val_acc" in present else ("val_loss" if "val_loss" in present else None)
    if best is not None:
        if best not in present:
            raise ValueError(f"cannot mark the best epoch on {best!r}: no such values")
        v = h[best].to_numpy(dtype=float)
        v = np.where(np.isfinite(v), v, -np.inf if best.endswith("acc") else np.inf)
        i = int(np.argmax(v) if best.endswith("acc") else np.argmin(v))
        for ax in panels.values():
            ax.axvline(epoch[i], color="#777777", linestyle=":", linewidth=0.8)
        target = ax_acc if best.endswith("acc") else ax_loss
        target.plot(
            [epoch[i]],
            [h[best].iloc[i]],
            marker="*",
            markersize=6,
            color=PALETTE[1],
            linestyle="none",
            label=f"best epoch {epoch[i]:g} ({best} {h[best].iloc[i]:.3f})",
        )
    # train/val legend in the first panel that has series; the best-epoch marker's legend in
    # the panel that holds it
    for ax in panels.values():
        pairs = [(hd, lab) for hd, lab in zip(*ax.get_legend_handles_labels()) if not lab.startswith("best")]
        if pairs:
            legend_ax = ax
            break
    best_pairs = []
    for ax in panels.values():
        best_pairs += [(hd, lab) for hd, lab in zip(*ax.get_legend_handles_labels()) if lab.startswith("best")]
    if best_pairs:
        target = ax_acc if best.endswith("acc") else ax_loss
        if target is legend_ax:
            pairs = pairs + best_pairs
        else:
            target.legend(*zip(*best_pairs), loc="best")
    legend_ax.legend(*zip(*pairs), loc="best")
    axes[-1, 0].set_xlabel("epoch")
    return fig


@_styled
def confusion_matrix_plot(
    cm, class_names: Sequence[str], normalize: bool = True, *, title: str | None = None
) -> Figure:
    """Confusion matrix (rows = true class, columns = predicted). ``normalize`` divides each
    row by its total (rows without samples stay 0) and annotates fractions, else counts."""
    cm = np.asarray(cm, dtype=float)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"cm has shape {cm.shape} but there are {k} class names")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        vmax = 1.0
    else:
        values = cm
        vmax = max(float(cm.max()), 1.0)
    fig, axes = _figure(SINGLE_COLUMN, 3.1)
    ax = axes[0, 0]
    im = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            text = f"{v:.2f}" if normalize else f"{int(round(v))}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7 if k <= 8 else 6,
                color="white" if v > 0.6 * vmax else "black",
            )
    ax.set_xticks(range(k), labels=list(class_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of row" if normalize else "count")
    return fig


# --------------------------------------------------------------------------------------------
# pseudo labels


@_styled
def pseudo_label_spread(table, class_names: Sequence[str]) -> Figure:
    """Bar plot of :func:`pseudo_label_spread_table`: fraction of open samples per close-class
    pseudo label (counts on the bars), the uniform level 1/K dashed."""
    spread = pseudo_label_spread_table(table, class_names)
    k = len(spread)
    fig, axes = _figure(SINGLE_COLUMN, 2.6)
    ax = axes[0, 0]
    x = np.arange(k)
    bars = ax.bar(
        x,
        spread["fraction"],
        color=OPEN_COLOUR,
        alpha=0.8,
        edgecolor="black",
        linewidth=0.4,
        label="open samples",
        zorder=2,
    )
    ax.axhline(1.0 / k, color="black", linestyle="--", linewidth=0.8, label=f"uniform (1/{k})", zorder=1)
    ax.bar_label(
        bars,
        labels=[str(c) for c in spread["count"]],
        fontsize=7,
        padding=1.5,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4},
        zorder=3,
    )
    ax.set_xticks(x, labels=list(spread["class"]), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlabel("pseudo label (close class)")
    ax.set_ylabel("fraction of open samples")
    ax.set_ylim(0, max(float(spread["fraction"].max()), 1.0 / k) * 1.12)
    ax.set_title(f"n = {spread.attrs['n_open']} open samples, TV from uniform = {spread.attrs['tv_from_uniform']:.2f}")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=2)
    return fig


# --------------------------------------------------------------------------------------------
# reproduction table as a figure


_METRIC_LABEL = {"auroc": "AUROC", "fpr95": "FPR@TPR95"}
_DATASET_TITLE = {"ferplus": "FERPlus", "rafdb": "RAF-DB", "affectnet": "AffectNet"}


@_styled
def per_class_summary(
    summary, *, detectors: Sequence[str] | Mapping[str, str] | None = None, paper: Sequence[str] = ("Base", "Ours")
) -> Figure:
    """The reproduction table (:func:`ferlib.tables.summary_table`) as grouped bars.

    One group per open class and the mean; one bar per detector (mean over seeds, std as an
    error bar when there are several seeds); the paper's methods in ``paper`` drawn as
    markers where the summary has ``paper:<method>`` columns. For AUROC a dotted line marks
    chance (.5). Why a figure beside the table: a reader sees at once which open classes a
    detector fails on and how far each is from the published numbers.
    """
    attrs = getattr(summary, "attrs", {}) or {}
    names = _detector_names(detectors if detectors is not None else attrs.get("detectors", []))
    _columns(summary, [f"{d}:mean" for d in names])
    metric = attrs.get("metric", "auroc")
    rows = [str(r) for r in summary.index]
    x = np.arange(len(rows), dtype=float)
    width = 0.8 / len(names)
    fig, axes = _figure(DOUBLE_COLUMN, 2.6)
    ax = axes[0, 0]
    for k, (det, name) in enumerate(names.items()):
        mean = summary[f"{det}:mean"].to_numpy(dtype=float)
        std = summary[f"{det}:std"].to_numpy(dtype=float) if f"{det}:std" in summary else None
        err = None if std is None or not np.isfinite(std).any() else np.nan_to_num(std)
        ax.bar(
            x - 0.4 + width * (k + 0.5),
            mean,
            width,
            yerr=err,
            label=name,
            color=PALETTE[k % len(PALETTE)],
            edgecolor="white",
            linewidth=0.3,
            hatch=_HATCHES[(k // len(PALETTE)) % len(_HATCHES)],  # colours repeat after eight
            error_kw={"elinewidth": 0.6, "capsize": 1.5},
        )
    markers = ("x", "D", "^", "v", "s")
    for j, method in enumerate(paper):
        col = f"paper:{method}"
        if col not in summary.columns:
            continue
        vals = summary[col].to_numpy(dtype=float)
        if np.isfinite(vals).any():
            ax.plot(
                x,
                vals,
                linestyle="none",
                marker=markers[j % len(markers)],
                markersize=4,
                color="black" if j else "#777777",
                label=f"paper: {method}",
            )
    if metric == "auroc":
        ax.axhline(0.5, color="#999999", linestyle=":", linewidth=0.8)
    ax.set_xticks(x, rows)
    if "mean" in rows:
        ax.axvline(rows.index("mean") - 0.5, color="#BBBBBB", linewidth=0.6)
    ax.set_ylim(0, 1)
    ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
    ax.set_xlabel("open class")
    dataset = attrs.get("dataset")
    dataset = _DATASET_TITLE.get(str(dataset), dataset)
    where = ", ".join(str(v) for v in (dataset, attrs.get("protocol") and f"{attrs['protocol']} protocol") if v)
    if where:
        ax.set_title(where)
    entries = len(ax.get_legend_handles_labels()[1])
    # one column holds what the axes' height fits; more series (21 detectors) get more columns
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), ncols=max(1, -(-entries // _LEGEND_ROWS)))
    return fig


@_styled
def grouped_bars(
    table,
    *,
    x: str,
    series: str,
    mean: str = "mean",
    std: str = "std",
    ylabel: str,
    title: str | None = None,
    chance: float | None = None,
) -> Figure:
    """Runs set side by side (e.g. the same table from scratch and from face weights): one
    group of bars per value of column ``x`` (in order of first appearance), one bar per value
    of ``series`` (the compared runs, same colour in every group), height ``mean``, the std
    over seeds as an error bar where finite. ``chance`` draws a dotted line (AUROC: .5). A
    value of ``x`` that a series lacks leaves its slot empty, so gaps stay visible. Why bars:
    the question is "which run is higher for each method or detector", read at a glance."""
    _columns(table, [x, series, mean, std])
    groups = list(dict.fromkeys(table[x].astype(str)))
    names = list(dict.fromkeys(table[series].astype(str)))
    if not groups or not names:
        raise ValueError("no rows to draw")
    width = 0.8 / len(names)
    positions = np.arange(len(groups), dtype=float)
    height = 2.4 if len(groups) <= 12 else 3.0
    fig, axes = _figure(DOUBLE_COLUMN if len(groups) * len(names) > 8 else SINGLE_COLUMN, height)
    ax = axes[0, 0]
    for k, name in enumerate(names):
        rows = table[table[series].astype(str) == name].drop_duplicates(subset=[x], keep="last")
        rows = rows.set_index(rows[x].astype(str)).reindex(groups)
        values = rows[mean].to_numpy(dtype=float)
        err = rows[std].to_numpy(dtype=float)
        ax.bar(
            positions - 0.4 + width * (k + 0.5),
            values,
            width,
            yerr=np.nan_to_num(err) if np.isfinite(err).any() else None,
            label=name,
            color=PALETTE[k % len(PALETTE)],
            edgecolor="white",
            linewidth=0.3,
            hatch=_HATCHES[(k // len(PALETTE)) % len(_HATCHES)],
            error_kw={"elinewidth": 0.6, "capsize": 1.5},
        )
    if chance is not None:
        ax.axhline(chance, color="#999999", linestyle=":", linewidth=0.8)
    rotate = max(len(g) for g in groups) > 6
    ax.set_xticks(positions, groups, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=1, title=title)
    return fig


#: bar hatches, one per round of the palette (a third of 21 detectors share colours with each other)
_HATCHES = (None, "////", "....", "xxxx")
#: legend entries per column beside a 2.6-inch-high axes
_LEGEND_ROWS = 12


# --------------------------------------------------------------------------------------------
# noisy labels (stage 05)


@_styled
def accuracy_vs_noise(
    summary, *, value: str = "test_acc", ylabel: str = "test accuracy", title: str | None = None
) -> Figure:
    """Mean ``value`` against the label-noise rate, one line per method, the standard
    deviation over seeds as error bars; one panel per noise kind (symmetric, pair,
    annotator...), each starting from the clean setting at rate 0 when the summary has it.

    ``summary``: stage 05's ``summary.csv`` (columns ``method, kind, rate,
    measured_rate_mean, <value>_mean, <value>_std``). The x position is the nominal rate, or
    the measured one where there is none (annotator noise). ``title`` heads the legend on top."""
    import pandas as pd

    _columns(summary, ["method", "kind", "rate", "measured_rate_mean", f"{value}_mean", f"{value}_std"])
    frame = summary.copy()
    rate = frame["rate"].to_numpy(dtype=float)
    frame["x"] = np.where(np.isfinite(rate), rate, frame["measured_rate_mean"].to_numpy(dtype=float))
    kinds = [k for k in dict.fromkeys(frame["kind"].astype(str)) if k != "clean"] or ["clean"]
    clean = frame[frame["kind"].astype(str) == "clean"]
    ncols = min(len(kinds), 3)
    nrows = math.ceil(len(kinds) / ncols)
    fig, axes = _figure(SINGLE_COLUMN if ncols == 1 else DOUBLE_COLUMN, 0.6 + 1.9 * nrows, nrows, ncols, sharey=True)
    methods = list(dict.fromkeys(frame["method"].astype(str)))
    for ax, kind in zip(axes.flat, kinds):
        rows = frame[frame["kind"].astype(str) == kind]
        if kind != "clean" and len(clean):
            rows = pd.concat([clean, rows], ignore_index=True)
        for j, method in enumerate(methods):
            m = rows[rows["method"].astype(str) == method].sort_values("x")
            if m.empty:
                continue
            _series(ax, j, m["x"], m[f"{value}_mean"], m[f"{value}_std"], method)
        ax.set_title(kind)
        ax.set_xlabel("noise rate" if kind != "annotator" else "noise rate (measured)")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in axes.flat[len(kinds) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(methods), 6), title=title)
    return fig


@_styled
def memorisation_curves(curves, *, title: str | None = None) -> Figure:
    """How fast each method fits the flipped training labels: the share of flipped rows the
    model predicts as their *given* (wrong) label against the epoch, one line per method (mean
    over seeds, std as error bars), one panel per noise setting. A method robust to the noise
    keeps its line low while cross-entropy's climbs once it starts to memorise. Beside each
    panel's lines, in grey, the clean rows' share (the same for every method would mean the
    methods differ in memorisation only).

    ``curves``: one row per (method, noise, seed, epoch) with ``flipped_given`` and
    ``clean_fit`` (stage 01's history under label noise, :class:`ferlib.train.AgreementProbe`).
    ``title`` heads the legend on top."""
    _columns(curves, ["method", "noise", "seed", "epoch", "flipped_given", "clean_fit"])
    noises = list(dict.fromkeys(curves["noise"].astype(str)))
    methods = list(dict.fromkeys(curves["method"].astype(str)))
    ncols = min(len(noises), 3)
    nrows = math.ceil(len(noises) / ncols)
    fig, axes = _figure(SINGLE_COLUMN if ncols == 1 else DOUBLE_COLUMN, 0.6 + 1.9 * nrows, nrows, ncols, sharey=True)
    grouped = curves.groupby(["noise", "method", "epoch"], sort=False)[["flipped_given", "clean_fit"]]
    mean, std = grouped.mean(), grouped.std(ddof=1)
    for ax, noise in zip(axes.flat, noises):
        for j, method in enumerate(methods):
            if (noise, method) not in mean.index.droplevel("epoch"):
                continue
            m, d = mean.loc[(noise, method)], std.loc[(noise, method)]
            ax.plot(m.index, m["clean_fit"], color="0.75", linewidth=0.8, linestyle=LINESTYLES[j % len(LINESTYLES)])
            _series(ax, j, m.index, m["flipped_given"], d["flipped_given"], method)
        ax.set_title(noise)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("flipped rows fit to their given label")
    for ax in axes.flat[len(noises) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    handles.append(plt.Line2D([], [], color="0.75", linewidth=0.8))
    labels.append("clean rows fit (grey)")
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(methods) + 1, 6), title=title)
    return fig


@_styled
def flip_histograms(
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
    *,
    xlabel: str = "score (higher = flipped?)",
    bins: int | str = 40,
    ncols: int | None = None,
    title: str | None = None,
) -> Figure:
    """Density histograms of a per-sample score on training rows whose label was kept
    (``clean``, green) or flipped by the label noise (``flipped``, red), one panel per entry
    of ``panels`` (title -> (scores, flipped mask)), with the AUROC of the score as a detector
    of flipped labels under each panel (:func:`ferlib.metrics.openset_metrics`, flipped rows
    in the open class's role). ``title`` heads the clean/flipped legend on top."""
    if not panels:
        raise ValueError("no panels given")
    n = len(panels)
    ncols = ncols or (n if n <= 2 else min(n, 4))
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(SINGLE_COLUMN if ncols <= 2 else DOUBLE_COLUMN, 0.5 + 1.6 * nrows, nrows, ncols)
    names = ("clean", "flipped")
    for k, (ax, (name, (scores, flipped))) in enumerate(zip(axes.flat, panels.items())):
        s = np.asarray(scores, dtype=float)
        mask = _as_open_mask(np.asarray(flipped), "flipped")
        auroc = openset_metrics(s, mask)["auroc"]
        finite = np.isfinite(s)
        _hist_pair(ax, s[finite], mask[finite], bins, labels=(k == 0), names=names)
        ax.set_title(str(name))
        ax.set_xlabel(f"{xlabel}\nAUROC = {auroc:.3f} ({int(mask.sum())} flipped)")
        ax.locator_params(axis="x", nbins=4)
        if k % ncols == 0:
            ax.set_ylabel("density")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.legend(handles=_close_open_handles(names), loc="outside upper center", ncols=2, title=title)
    return fig


@_styled
def attention_maps(
    images,
    attention,
    head_names: Sequence[str],
    row_titles: Sequence[str] | None = None,
    extents=None,
) -> Figure:
    """Each head's spatial attention over a few images: one row per image, the image first,
    then one column per head (an ESR branch, a MA-Net patch) with its map drawn over the part
    of the image it covers (bilinear upsampling, inferno, 0..1).

    ``images``: uint8 ``(N, C, S, S)`` (C = 1 or 3); ``attention``: ``(N, H, h, w)`` in [0, 1];
    ``head_names``: H column titles; ``row_titles``: N labels (e.g. true and predicted class);
    ``extents``: ``(H, 4)`` fractions ``(top, bottom, left, right)`` of the image each head's
    map covers (a MA-Net quadrant), ``None``: every map covers the whole image."""
    images = np.asarray(images)
    attention = np.asarray(attention, dtype=float)
    if images.ndim != 4 or attention.ndim != 4 or len(images) != len(attention):
        raise ValueError(
            f"images (N, C, S, S) and attention (N, H, h, w) expected, got {images.shape}, {attention.shape}"
        )
    n, heads = attention.shape[:2]
    if len(head_names) != heads:
        raise ValueError(f"{len(head_names)} head names for {heads} heads")
    extents = np.tile([0.0, 1.0, 0.0, 1.0], (heads, 1)) if extents is None else np.asarray(extents, dtype=float)
    if extents.shape != (heads, 4):
        raise ValueError(f"extents must be ({heads}, 4) fractions (top, bottom, left, right), got {extents.shape}")
    side = 0.75
    fig, axes = _figure(min(DOUBLE_COLUMN, side * (heads + 1) + 0.4), 0.4 + side * 1.15 * n, n, heads + 1)
    pictures = images.transpose(0, 2, 3, 1)
    for i in range(n):
        picture = pictures[i, :, :, 0] if pictures.shape[-1] == 1 else pictures[i]
        height, width = picture.shape[:2]
        axes[i, 0].imshow(picture, cmap="gray", vmin=0, vmax=255)
        if row_titles is not None:
            axes[i, 0].set_title(str(row_titles[i]), fontsize=5.5)
        for j in range(heads):
            ax = axes[i, j + 1]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=255)
            top, bottom, left, right = extents[j]
            ax.imshow(
                attention[i, j],
                cmap="inferno",
                vmin=0.0,
                vmax=1.0,
                alpha=0.55,
                interpolation="bilinear",
                extent=(left * width - 0.5, right * width - 0.5, bottom * height - 0.5, top * height - 0.5),
            )
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_ylim(height - 0.5, -0.5)
            if i == 0:
                ax.set_title(str(head_names[j]), fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------
# open-set detection against the evaluation set's open share


@_styled
def metric_vs_open_fraction(summary, *, metric: str = "auroc", title: str | None = None) -> Figure:
    """Mean ``metric`` of each detector against the evaluation set's open share, the std over
    draws as error bars (:func:`ferlib.openset.fraction.summarise_fraction_study`'s table).

    Why: a transductive detector's AUROC moves with the open share while a post-hoc one's
    should stay flat up to sampling noise; one line per detector shows which is which and
    where the benchmark's own share (57% for FERPlus Surprise, 37% in the paper's RAF-DB
    setting) sits on the curve."""
    _columns(summary, ["fraction", "open_share", "detector", f"{metric}_mean", f"{metric}_std"])
    fig, axes = _figure(SINGLE_COLUMN, 2.4)
    ax = axes[0, 0]
    for j, det in enumerate(dict.fromkeys(summary["detector"].astype(str))):
        rows = summary[summary["detector"].astype(str) == det].sort_values("open_share")
        x = 100 * rows["open_share"].to_numpy(dtype=float)
        _series(ax, j, x, rows[f"{metric}_mean"], rows[f"{metric}_std"], det)
    if metric == "auroc":
        ax.axhline(0.5, color="#999999", linestyle=":", linewidth=0.8)
    ax.set_xlabel("open samples in the evaluation set (%)")
    ax.set_ylabel(_METRIC_LABEL.get(metric, metric))
    if title:
        ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), ncols=1)
    return fig


# --------------------------------------------------------------------------------------------
# open-set detection against the close-set model's training length (memorisation)

#: line style of each evaluation protocol in the figures that show both
PROTOCOL_LINESTYLES = {"honest": "-", "reference": "--"}


@_styled
def metric_vs_epochs(table, *, metric: str = "auroc", title: str | None = None) -> Figure:
    """``metric`` of each detector against the close-set model's training epochs, solid under
    the honest protocol and dashed under the reference one (top), and the model's training
    and close test accuracy (bottom), from ``tools/memorisation.py``'s table (columns
    ``epoch, protocol, detector, <metric>, train_acc, test_acc``).

    Why: the reference protocol hands open training images the outputs of other training
    images, which a close-set model memorises as it trains; the gap between the two line
    styles against the training accuracy shows how much of a score's AUROC that is. The
    x axis is logarithmic (base 2) when the epochs span a factor of four or more."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, NullLocator

    _columns(table, ["epoch", "protocol", "detector", metric, "train_acc", "test_acc"])
    fig, axes = _figure(SINGLE_COLUMN, 4.0, 2, 1, sharex=True, height_ratios=(2.2, 1.0))
    top, bottom = axes[0, 0], axes[1, 0]
    detectors = list(dict.fromkeys(table["detector"].astype(str)))
    protocols = [p for p in PROTOCOL_LINESTYLES if p in set(table["protocol"].astype(str))]
    for j, det in enumerate(detectors):
        for protocol in protocols:
            rows = table[(table["detector"].astype(str) == det) & (table["protocol"].astype(str) == protocol)]
            rows = rows.sort_values("epoch")
            top.plot(
                rows["epoch"].to_numpy(dtype=float),
                rows[metric].to_numpy(dtype=float),
                color=PALETTE[j % len(PALETTE)],
                linestyle=PROTOCOL_LINESTYLES[protocol],
                marker=SERIES_MARKERS[j % len(SERIES_MARKERS)],
                markersize=3,
                markerfacecolor="white" if protocol == "reference" else None,
            )
    if metric == "auroc":
        top.axhline(0.5, color="#999999", linestyle=":", linewidth=0.8)
    top.set_ylabel(_METRIC_LABEL.get(metric, metric))
    if title:
        top.set_title(title)
    handles = [
        Line2D(
            [],
            [],
            color=PALETTE[j % len(PALETTE)],
            marker=SERIES_MARKERS[j % len(SERIES_MARKERS)],
            markersize=3,
            label=det,
        )
        for j, det in enumerate(detectors)
    ] + [Line2D([], [], color="#555555", linestyle=PROTOCOL_LINESTYLES[p], label=p) for p in protocols]
    fig.legend(handles=handles, loc="outside lower center", ncols=4)
    per_epoch = table.drop_duplicates("epoch").sort_values("epoch")
    epochs = per_epoch["epoch"].to_numpy(dtype=float)
    for k, (col, label) in enumerate((("train_acc", "training rows"), ("test_acc", "close test"))):
        bottom.plot(
            epochs,
            per_epoch[col].to_numpy(dtype=float),
            color=OKABE_ITO["black"] if k == 0 else OKABE_ITO["sky"],
            linestyle=LINESTYLES[k],
            marker=SERIES_MARKERS[k],
            markersize=3,
            label=label,
        )
    bottom.set_ylabel("accuracy")
    bottom.set_xlabel("close-set training epochs")
    bottom.legend(loc="upper left")
    if len(epochs) and epochs.min() > 0 and epochs.max() / epochs.min() >= 4:
        bottom.set_xscale("log", base=2)
    bottom.set_xticks(epochs)
    bottom.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    bottom.xaxis.set_minor_locator(NullLocator())
    return fig
