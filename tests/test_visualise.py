"""Stage 04: every figure of a finished run redrawn from its files alone, and the sweep's tables.

A small fake finished run is written from synthetic arrays (no model, no data set, no training):
stage 01's history and results, stage 02's pseudo-label table and outputs, stage 03's scores
under both protocols (detectors msp, energy, cycle) and the cycle detector's features for the
honest protocol only, metrics.csv and manifest.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from ferlib import plots, report  # noqa: E402
from ferlib.metrics import metrics_table  # noqa: E402
from ferlib.openset.data import TABLE_COLUMNS  # noqa: E402

CLOSE = [0, 1, 3, 4, 5, 6]  # canonical close classes when surprise (2) is open
CLOSE_NAMES = ["neutral", "happiness", "sadness", "anger", "disgust", "fear"]
DETECTORS = ["msp", "energy", "cycle"]
N_TEST, N_TEST_OPEN, N_TRAIN_OPEN, N_TRAIN = 110, 15, 35, 200  # 145 evaluation rows
DIM = 16


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def _write_manifest(run: Path, open_class: str, seed: int, dataset: str = "ferplus") -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_text(
        json.dumps({"params": {"dataset": dataset, "open_class": open_class, "seed": seed}})
    )


def _metrics(rng, protocols=("honest", "reference")) -> pd.DataFrame:
    rows = [
        {
            "detector": d,
            "protocol": p,
            "auroc": rng.uniform(0.5, 0.9),
            "fpr95": rng.uniform(0.3, 0.9),
            "aupr_in": 0.7,
            "aupr_out": 0.6,
            "n_close": 100,
            "n_open": 50,
            "close_acc": 0.8,
            "eval_subset": "all",
        }
        for p in protocols
        for d in DETECTORS
    ]
    return pd.DataFrame(rows)


def make_run(run: Path, open_class: str = "surprise", seed: int = 0) -> Path:
    """A finished run in ``run`` from synthetic arrays (surprise open)."""
    rng = np.random.default_rng(seed)
    k = len(CLOSE)
    # stage 01
    close_dir = run / "01_close_set"
    close_dir.mkdir(parents=True)
    epochs = np.arange(1, 6)
    pd.DataFrame(
        {
            "epoch": epochs,
            "train_loss": np.linspace(2, 0.5, 5),
            "train_acc": np.linspace(0.3, 0.9, 5),
            "val_loss": np.linspace(2, 1, 5),
            "val_acc": np.linspace(0.3, 0.7, 5),
            "lr": 1e-3 * 0.9**epochs,
        }
    ).to_csv(close_dir / "history.csv", index=False)
    cm = rng.integers(0, 20, (k, k)) + 30 * np.eye(k, dtype=int)
    (close_dir / "results.json").write_text(
        json.dumps({"test_acc": 0.7, "best_epoch": 4, "class_names": CLOSE_NAMES, "confusion": cm.tolist()})
    )

    # stage 02: test rows (some open) then the open class's training images
    test_labels = np.r_[rng.choice(CLOSE, N_TEST - N_TEST_OPEN), np.full(N_TEST_OPEN, 2)]
    rng.shuffle(test_labels)
    train_labels = rng.choice(CLOSE + [2], N_TRAIN)
    open_train = np.flatnonzero(train_labels == 2)[:N_TRAIN_OPEN]
    assert len(open_train) == N_TRAIN_OPEN
    labels = np.r_[test_labels, train_labels[open_train]]
    n = len(labels)
    is_open = labels == 2
    target = np.where(is_open, -1, np.searchsorted(CLOSE, labels))
    centres = rng.normal(0, 3, (8, DIM))
    features = centres[labels] + rng.normal(0, 1, (n, DIM))
    logits = rng.normal(0, 1, (n, k)) + 3 * np.eye(k)[np.clip(target, 0, None)] * (~is_open)[:, None]
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"test/{i}.png" for i in range(N_TEST)] + [f"train/{i}.png" for i in open_train],
            "label": labels,
            "target": target,
            "pseudo": logits.argmax(1),
            "is_open": is_open,
            "origin": ["test"] * N_TEST + ["train"] * N_TRAIN_OPEN,
            "source_index": np.r_[np.arange(N_TEST), open_train],
        }
    )[TABLE_COLUMNS]
    for j in range(k):
        table[f"logit_{j}"] = logits[:, j]
    pseudo_dir = run / "02_pseudo_labels"
    pseudo_dir.mkdir()
    table.to_csv(pseudo_dir / "pseudo_labels.csv", index=False)
    train_close = np.flatnonzero(train_labels != 2)
    all_train_features = centres[train_labels] + rng.normal(0, 1, (N_TRAIN, DIM))
    np.savez(
        pseudo_dir / "outputs.npz",
        eval_logits=logits,
        eval_features=features,
        all_train_logits=rng.normal(0, 1, (N_TRAIN, k)),
        all_train_features=all_train_features,
        train_index=train_close,
        train_targets=np.searchsorted(CLOSE, train_labels[train_close]),
        class_names=np.array(CLOSE_NAMES),
    )

    # stage 03
    detect = run / "03_detect"
    detect.mkdir()
    frames = []
    for protocol in ("honest", "reference"):
        scores = table[TABLE_COLUMNS].copy()
        scores["msp"] = rng.normal(size=n) + 0.5 * is_open
        scores["energy"] = rng.normal(size=n) + 1.0 * is_open
        scores["cycle"] = np.abs(rng.normal(size=n)) + 2.0 * is_open
        scores.to_csv(detect / f"scores_{protocol}.csv", index=False)
        frames.append(metrics_table(scores, DETECTORS, protocol))
    np.save(
        detect / "detector_features_honest.npy",
        (centres[labels] + rng.normal(0, 0.5, (n, DIM)))[:, :8].astype(np.float32),
    )
    pd.concat(frames).assign(eval_subset="all").to_csv(run / "metrics.csv", index=False)
    _write_manifest(run, open_class, seed)
    return run


# figure name -> size in inches
EXPECTED = {
    "learning_curves": (plots.SINGLE_COLUMN, 3.4),
    "confusion_matrix": (plots.SINGLE_COLUMN, 3.1),
    **{
        name: size
        for p in ("honest", "reference")
        for name, size in {
            f"score_histograms_{p}": (plots.DOUBLE_COLUMN, 2.0),  # three panels in one row
            f"loss_histogram_{p}": (plots.SINGLE_COLUMN, 2.2),
            f"roc_curves_{p}": (plots.SINGLE_COLUMN, 3.0),
            f"pseudo_label_spread_{p}": (plots.SINGLE_COLUMN, 2.6),
        }.items()
    },
    "embedding_tsne_honest": (plots.DOUBLE_COLUMN, 3.3),  # close-set model | cycle detector
    "embedding_tsne_reference": (plots.SINGLE_COLUMN, 3.3),  # no cycle features: one panel
}


def test_visualise_redraws_every_figure(tmp_path):
    run = make_run(tmp_path / "run")
    written = report.visualise(run_dir=str(run), embed_method="tsne", embed_max_points=100, seed=3)
    figures = run / "figures"
    assert set(written) == set(EXPECTED)
    for name, (width, height) in EXPECTED.items():
        png, pdf = written[name][:2]
        assert png == figures / f"{name}.png" and pdf == figures / f"{name}.pdf"
        assert pdf.read_bytes()[:5] == b"%PDF-"
        with Image.open(png) as im:
            im.load()
            assert im.format == "PNG"
            assert im.size == (round(width * plots.DPI), round(height * plots.DPI)), name
    assert not list(figures.glob(".*.tmp"))
    assert not plt.get_fignums()  # every figure closed

    # the embedding: the same rows in both panels, subsampled to 100, open samples kept
    emb = np.load(figures / "embedding_tsne_honest.npz")
    assert list(emb["titles"]) == ["close-set model (baseline)", "cycle detector (paper's method)"]
    assert emb["coords_0"].shape == emb["coords_1"].shape == (100, 2)
    assert len(np.unique(emb["index"])) == 100 and emb["is_open"].any()
    scores = pd.read_csv(run / "03_detect" / "scores_honest.csv").set_index("index")
    np.testing.assert_array_equal(scores.loc[emb["index"], "label"], emb["label"])

    # same files and seed: the identical embedding (subsample and coordinates)
    again = report.visualise(run_dir=str(run), protocols=("honest",), embed_method="tsne", embed_max_points=100, seed=3)
    assert "roc_curves_reference" not in again
    emb2 = np.load(again["embedding_tsne_honest"][2])
    for key in ("index", "coords_0", "coords_1"):
        np.testing.assert_array_equal(emb[key], emb2[key])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["params"]["open_class"] == "surprise"  # stage 04 only adds its section
    assert manifest["visualise"]["embed_method"] == "tsne"


def test_visualise_umap_default_is_seeded(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "01_close_set" / "history.csv").unlink()  # stage 01 figures need the history
    (run / "03_detect" / "scores_reference.csv").unlink()  # a protocol without scores is skipped
    written = report.visualise(run_dir=str(run), protocols=("honest", "reference"), embed_max_points=60)
    assert "learning_curves" not in written and "roc_curves_honest" in written
    assert "roc_curves_reference" not in written
    png, _, npz = written["embedding_umap_honest"]
    with Image.open(png) as im:
        assert im.size == (round(plots.DOUBLE_COLUMN * plots.DPI), round(3.3 * plots.DPI))
    emb = np.load(npz)
    assert emb["coords_0"].shape == (60, 2) and str(emb["method"]) == "umap"
    # the close-set panel is plots.embedding of those rows' features; the same seed gives the
    # identical coordinates, another seed other ones
    features = np.load(run / "02_pseudo_labels" / "outputs.npz")["eval_features"][emb["index"]]
    np.testing.assert_array_equal(plots.embedding(features, method="umap", seed=0), emb["coords_0"])
    assert not np.allclose(plots.embedding(features, method="umap", seed=1), emb["coords_0"])
    # the subsample is seeded too
    np.testing.assert_array_equal(report._subsample(145, 60, 0), emb["index"])
    assert not np.array_equal(report._subsample(145, 60, 1), emb["index"])


def test_visualise_needs_scores(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "03_detect" / "scores_reference.csv").unlink()
    with pytest.raises(FileNotFoundError, match="run stage 03 first"):
        report.visualise(run_dir=str(run), protocols=("reference",))
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):  # checked up front
        report.visualise(run_dir=str(run), protocols=("nope",))
    with pytest.raises(ValueError, match="embed_method"):
        report.visualise(run_dir=str(run), embed_method="pca")


def test_collect_results_writes_tables_per_protocol(tmp_path):
    rng = np.random.default_rng(0)
    sweep = tmp_path / "outputs"
    make_run(sweep / "ferplus_open-surprise_seed0")
    for open_class in ("surprise", "fear"):
        for seed in (1, 2):
            run = sweep / f"ferplus_open-{open_class}_seed{seed}"
            _write_manifest(run, open_class, seed)
            _metrics(rng).to_csv(run / "metrics.csv", index=False)
    _write_manifest(sweep / "ferplus_open-disgust_seed0", "disgust", 0)  # unfinished: no metrics.csv
    (sweep / "cache").mkdir()
    out = tmp_path / "tables"
    tables = report.collect_results(str(sweep / "*"), out_dir=str(out))
    assert set(tables) == {f"ferplus_{m}_{p}" for m in ("auroc", "fpr95") for p in ("honest", "reference")}
    for stem, table in tables.items():
        for suffix in ("csv", "md", "tex", "pdf"):
            assert (out / f"{stem}.{suffix}").is_file(), stem
        with Image.open(out / f"{stem}.png") as im:  # the bar chart, double column
            assert im.size == (round(plots.DOUBLE_COLUMN * plots.DPI), round(2.6 * plots.DPI))
        assert list(table.index) == ["Sur", "Fea", "mean"]  # the paper's order, no disgust
        assert set(DETECTORS) <= set(table.columns)
        # the paper publishes FERPlus AUROC only
        assert ("paper:Ours" in table.columns) == (table.attrs["metric"] == "auroc")
    auroc = tables["ferplus_auroc_honest"]
    assert auroc.attrs["protocol"] == "honest" and auroc.attrs["metric"] == "auroc"
    assert auroc.loc["Sur", "msp:n"] == 3 and auroc.loc["Fea", "msp:n"] == 2
    assert "Sur" in (out / "ferplus_auroc_reference.md").read_text()
    with pytest.raises(ValueError, match="no finished run"):
        report.collect_results(str(sweep / "cache*"), out_dir=str(out))


def test_scores_rows_align_with_pseudo_labels():
    """Stage 03's eval_subset="test" keeps some rows, re-indexed: rows match on (origin, source_index)."""
    table = pd.DataFrame({"origin": ["test"] * 4 + ["train"] * 3, "source_index": [0, 1, 2, 3, 0, 5, 9]})
    scores = table.iloc[[5, 1, 2]].reset_index(drop=True)
    np.testing.assert_array_equal(report._align_rows(scores, table, "pseudo_labels.csv"), [5, 1, 2])
    stale = pd.DataFrame({"origin": ["train"], "source_index": [4]})
    with pytest.raises(ValueError, match="not in pseudo_labels.csv"):
        report._align_rows(stale, table, "pseudo_labels.csv")


@pytest.mark.slow
def test_notebook_04_through_papermill_redraws_and_tabulates(tmp_path):
    """The notebook path: the runner executes notebook 04 on finished runs' files alone, with
    ``results_glob`` gathering them into the tables (written beside the runs)."""
    from test_run import _kernel_or_skip  # tests/ is on sys.path (pytest's rootdir import)

    from ferlib.run import main

    _kernel_or_skip()
    out = tmp_path / "outputs"
    make_run(out / "ferplus_open-surprise_seed0")
    make_run(out / "ferplus_open-fear_seed0", open_class="fear")
    face = tmp_path / "face"
    make_run(face / "ferplus_open-surprise_seed0")
    code = main(
        [
            "stage",
            "04",
            "--dataset",
            "ferplus",
            "--open-class",
            "surprise",
            "--outputs",
            str(out),
            "--executor",
            "papermill",
            "-p",
            "embed_method='tsne'",
            "-p",
            "embed_max_points=100",
            "-p",
            f"results_glob='{out / 'ferplus_open-*'}'",
            "-p",
            f"compare=['{out / 'ferplus_open-*'}', '{face}']",
        ]
    )
    assert code == 0
    run = out / "ferplus_open-surprise_seed0"
    executed = (run / "notebooks" / "04_visualise.ipynb").read_text()
    assert "AUROC, honest protocol" in executed and "image/png" in executed
    assert (run / "figures" / "score_histograms_honest.pdf").is_file()
    for suffix in ("csv", "md", "tex", "png", "pdf"):
        assert (out / "tables" / f"ferplus_auroc_honest.{suffix}").is_file()
    table = pd.read_csv(out / "tables" / "ferplus_auroc_honest.csv")
    assert list(table["open"]) == ["Sur", "Fea", "mean"]
    assert "outputs: honest AUROC" in executed and "face: honest AUROC" in executed  # the comparison, shown
    assert (out / "tables" / "ferplus_comparison.png").is_file()


def test_visualise_compare_sets_sweeps_side_by_side(tmp_path):
    """``compare``: two sweeps give the comparison table and bars beside the runs; one sweep,
    or a bare string, is refused before any figure is drawn."""
    out = tmp_path / "outputs"
    run = make_run(out / "ferplus_open-surprise_seed0")
    make_run(tmp_path / "face" / "ferplus_open-surprise_seed0")
    with pytest.raises(ValueError, match="two or more sweeps"):
        report.visualise(run_dir=str(run), embed_max_points=0, compare=[str(out)])
    with pytest.raises(ValueError, match="two or more sweeps"):
        report.visualise(run_dir=str(run), embed_max_points=0, compare=str(out))
    assert not (run / "figures").exists()
    written = report.visualise(run_dir=str(run), embed_max_points=0, compare=[str(out), str(tmp_path / "face")])
    png, pdf, md = written["comparison_ferplus"]
    assert png.parent == out / "tables" and png.is_file() and pdf.is_file()
    assert "| detector | outputs: honest AUROC |" in md.read_text() and "face: honest AUROC" in md.read_text()
