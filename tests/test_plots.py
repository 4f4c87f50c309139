"""ferlib.plots: every figure writes PNG + PDF of the intended size; embeddings are seeded."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from PIL import Image  # noqa: E402

from ferlib import plots  # noqa: E402
from ferlib.metrics import confusion, metrics_table, openset_metrics  # noqa: E402

CLOSE = [0, 1, 3, 4, 5, 6]  # canonical close classes with surprise (2) open
CLOSE_NAMES = ["neutral", "happiness", "sadness", "anger", "disgust", "fear"]


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


@pytest.fixture
def scores_frame():
    rng = np.random.default_rng(0)
    n = 400
    is_open = rng.random(n) < 0.4
    label = np.where(is_open, 2, rng.choice(CLOSE, n))
    target = np.searchsorted(CLOSE, label)
    pseudo = np.where(is_open, rng.integers(0, 6, n), np.where(rng.random(n) < 0.8, target, rng.integers(0, 6, n)))
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"img/{i}.png" for i in range(n)],
            "label": label,
            "pseudo": pseudo,
            "is_open": is_open,
            "origin": np.where(is_open, "train", "test"),
            "msp": rng.normal(size=n),
            "energy": rng.normal(size=n) + 0.5 * is_open,
            "cycle_loss": np.abs(rng.normal(size=n)) + 3.0 * is_open,
        }
    )


@pytest.fixture
def history():
    epochs = np.arange(1, 13)
    val_acc = np.r_[np.linspace(0.3, 0.72, 9), 0.70, 0.71, 0.69]
    return pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": np.linspace(2.0, 0.3, 12),
            "train_acc": np.linspace(0.3, 0.95, 12),
            "val_loss": np.linspace(2.0, 0.9, 12),
            "val_acc": val_acc,
            "lr": 1e-3 * 0.9 ** (epochs - 1),
        }
    )


def _check_written(fig, tmp_path, name):
    width, height = fig.get_size_inches()
    assert width in (plots.SINGLE_COLUMN, plots.DOUBLE_COLUMN)
    paths = plots.save_figure(fig, tmp_path / name)
    png, pdf = paths
    assert png == tmp_path / f"{name}.png" and pdf == tmp_path / f"{name}.pdf"
    assert png.is_file() and pdf.is_file()
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG"
        assert im.size == (round(width * plots.DPI), round(height * plots.DPI))
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind
    assert not plt.fignum_exists(fig.number)  # save_figure closed it
    return paths


def _font_sizes(fig):
    return [t.get_fontsize() for t in fig.findobj(Text) if t.get_text().strip()]


# --------------------------------------------------------------------------------------------
# every figure function writes PNG and PDF of the intended size


def test_score_histograms(scores_frame, tmp_path):
    dets = ["msp", "energy", "cycle_loss"]
    fig = plots.score_histograms(scores_frame, dets)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3
    auroc = openset_metrics(scores_frame["cycle_loss"], scores_frame["is_open"])["auroc"]
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert any(f"AUROC = {auroc:.3f}" in lab for lab in labels)
    sizes = _font_sizes(fig)
    assert sizes and min(sizes) >= 7 and max(sizes) <= 9
    _check_written(fig, tmp_path, "hist3")
    # one or two panels fit the single column
    fig = plots.score_histograms(scores_frame, {"msp": "MSP"})
    assert fig.get_size_inches()[0] == plots.SINGLE_COLUMN
    assert fig.axes[0].get_title() == "MSP"
    _check_written(fig, tmp_path, "hist1")


def test_score_histograms_reads_auroc_from_metrics(scores_frame):
    table = metrics_table(scores_frame, ["msp", "energy"], "honest")
    table.loc[table["detector"] == "msp", "auroc"] = 0.123  # marks where the number came from
    fig = plots.score_histograms(scores_frame, ["msp", "energy"], metrics=table, protocol="honest")
    assert "AUROC = 0.123" in fig.axes[0].get_xlabel()
    fig = plots.score_histograms(scores_frame, ["msp"], metrics={"msp": 0.456})
    assert "AUROC = 0.456" in fig.axes[0].get_xlabel()


def test_loss_histogram(scores_frame, tmp_path):
    fig = plots.loss_histogram(scores_frame, "cycle_loss")
    _check_written(fig, tmp_path, "loss")


def test_roc_curves(scores_frame, tmp_path):
    fig = plots.roc_curves(scores_frame, ["msp", "energy", "cycle_loss"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    auroc = openset_metrics(scores_frame["energy"], scores_frame["is_open"])["auroc"]
    assert f"energy ({auroc:.3f})" in legend
    assert "chance" in legend
    _check_written(fig, tmp_path, "roc")


def test_learning_curves(history, tmp_path):
    fig = plots.learning_curves(history)
    assert len(fig.axes) == 2
    best = int(history["epoch"][history["val_acc"].idxmax()])
    for ax in fig.axes:  # the best epoch is marked in both panels
        xs = [
            line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":" and len(line.get_xdata()) == 2
        ]
        assert best in xs
    _check_written(fig, tmp_path, "curves")
    # loss only: one panel, best epoch on val_loss
    fig = plots.learning_curves(history[["epoch", "train_loss", "val_loss"]])
    assert len(fig.axes) == 1
    _check_written(fig, tmp_path, "curves_loss")


def test_confusion_matrix_plot(scores_frame, tmp_path):
    closed = scores_frame[~scores_frame["is_open"]]
    cm = confusion(np.searchsorted(CLOSE, closed["label"]), closed["pseudo"], 6)
    fig = plots.confusion_matrix_plot(cm, CLOSE_NAMES)
    image = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(np.asarray(image).sum(axis=1), 1.0)
    sizes = _font_sizes(fig)
    assert min(sizes) >= 7 and max(sizes) <= 9
    _check_written(fig, tmp_path, "cm")
    fig = plots.confusion_matrix_plot(cm, CLOSE_NAMES, normalize=False)
    np.testing.assert_array_equal(np.asarray(fig.axes[0].get_images()[0].get_array()), cm)
    _check_written(fig, tmp_path, "cm_counts")
    with pytest.raises(ValueError, match="class names"):
        plots.confusion_matrix_plot(cm, CLOSE_NAMES[:5])


def test_pseudo_label_spread(scores_frame, tmp_path):
    table = scores_frame[["index", "path", "label", "pseudo", "is_open", "origin"]]
    spread = plots.pseudo_label_spread_table(table, CLOSE_NAMES)
    open_pseudo = table.loc[table["is_open"], "pseudo"].to_numpy()
    np.testing.assert_array_equal(spread["count"], np.bincount(open_pseudo, minlength=6))
    np.testing.assert_allclose(spread["fraction"], spread["count"] / len(open_pseudo))
    assert list(spread["class"]) == CLOSE_NAMES
    assert spread.attrs["n_open"] == len(open_pseudo)
    tv = 0.5 * np.abs(spread["fraction"] - 1 / 6).sum()
    assert spread.attrs["tv_from_uniform"] == pytest.approx(tv)

    fig = plots.pseudo_label_spread(table, CLOSE_NAMES)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, spread["fraction"])
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed and np.allclose(dashed[0].get_ydata(), 1 / 6)
    _check_written(fig, tmp_path, "spread")


def test_pseudo_label_spread_errors(scores_frame):
    with pytest.raises(ValueError, match="outside 0..4"):
        plots.pseudo_label_spread_table(scores_frame, CLOSE_NAMES[:5])
    with pytest.raises(ValueError, match="no open samples"):
        plots.pseudo_label_spread_table(scores_frame[~scores_frame["is_open"]], CLOSE_NAMES)


def test_save_figure_suffix_and_dots(scores_frame, tmp_path):
    fig = plots.loss_histogram(scores_frame, "cycle_loss")
    paths = plots.save_figure(fig, tmp_path / "sub" / "loss_v1.2.png")
    assert [p.name for p in paths] == ["loss_v1.2.png", "loss_v1.2.pdf"]
    assert all(p.is_file() for p in paths)


# --------------------------------------------------------------------------------------------
# embeddings


def test_umap_embedding_is_deterministic_and_plots(tmp_path):
    # small, so the test costs mostly numba's one-off JIT compilation of UMAP (~10-20 s)
    rng = np.random.default_rng(0)
    n, d = 200, 16
    labels = rng.choice(CLOSE + [2], n)
    is_open = labels == 2
    features = rng.normal(size=(n, d)) + 3.0 * np.eye(d)[labels % d]
    a = plots.embedding(features, labels, is_open, CLOSE_NAMES, method="umap", seed=0)
    b = plots.embedding(features, labels, is_open, CLOSE_NAMES, method="umap", seed=0)
    assert a.shape == (n, 2) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    c = plots.embedding(features, method="umap", seed=1)
    assert not np.array_equal(a, c)

    names = {0: "neutral", 1: "happiness", 2: "surprise", 3: "sadness", 4: "anger", 5: "disgust", 6: "fear"}
    fig = plots.embedding_plot(a, labels, is_open, names, title="UMAP, seed 0")
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[-1] == "open (surprise)" and "neutral" in legend
    _check_written(fig, tmp_path, "umap")
    fig = plots.embedding_comparison({"baseline": a, "ours": c}, labels, is_open)
    assert fig.get_size_inches()[0] == plots.DOUBLE_COLUMN
    _check_written(fig, tmp_path, "umap_pair")


def test_tsne_embedding_is_deterministic():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 8))
    a = plots.embedding(features, method="tsne", seed=3, max_iter=250)
    b = plots.embedding(features, method="tsne", seed=3, max_iter=250)
    assert a.shape == (60, 2)
    assert np.array_equal(a, b)


def test_embedding_errors():
    with pytest.raises(ValueError, match="unknown embedding method"):
        plots.embedding(np.zeros((10, 3)), method="pca")
    with pytest.raises(ValueError, match="labels has 9 entries for 10"):
        plots.embedding(np.zeros((10, 3)), labels=np.zeros(9))
    with pytest.raises(ValueError, match="no entry in class_names"):
        plots.embedding_plot(np.zeros((4, 2)), [0, 1, 7, 2], [0, 0, 0, 1], ["a", "b"])
