"""The runner pointed at RAF-DB and AffectNet, in the layouts the loaders read, with no code
change: only ``--dataset`` and ``--data-root`` differ from a FERPlus sweep.

The data are tiny random images written by the conftest fixtures, so the numbers mean nothing;
what is checked is that every stage runs, the runs land under the data set's name, the
evaluation set holds the open class's samples, and the tables come out per data set (with the
paper's columns for RAF-DB, which the paper reports, and without them for AffectNet).
"""

from __future__ import annotations

import pandas as pd
import pytest

from ferlib import published, report
from ferlib.manifest import read_manifest
from ferlib.run import main

pytestmark = pytest.mark.slow

# Small enough for a few seconds per run on 2 cores.
PARAMS = [
    "-p",
    "epochs=1",
    "-p",
    "input_size=32",
    "-p",
    "batch_size=16",
    "-p",
    "progress=False",
    "-p",
    "detectors=['msp', 'tknn']",
]


def _sweep(dataset: str, root, out, open_classes: list[str]) -> int:
    return main(
        [
            "sweep",
            "--dataset",
            dataset,
            "--data-root",
            str(root),
            "--open",
            *open_classes,
            "--seeds",
            "0",
            "--executor",
            "python",
            "--outputs",
            str(out),
            *PARAMS,
            "-p",
            f"cache_dir={out / 'cache'}",
        ]
    )


def _check_run(run_dir, dataset: str, open_class: str, n_open: int) -> None:
    manifest = read_manifest(run_dir)
    assert manifest["params"]["dataset"] == dataset
    assert manifest["params"]["open_class"] == open_class
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert set(metrics["detector"]) == {"msp", "tknn"}
    assert set(metrics["protocol"]) == {"honest", "reference"}
    assert metrics["auroc"].between(0, 1).all()
    table = pd.read_csv(run_dir / "02_pseudo_labels" / "pseudo_labels.csv")
    assert int(table["is_open"].sum()) == n_open


def test_rafdb_sweep_and_tables(make_rafdb, tmp_path):
    # RAF-DB ids 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral.
    entries = [(f"train_{10 * c + i:05d}.jpg", c) for c in range(1, 8) for i in range(8)]
    entries += [(f"test_{10 * c + i:04d}.jpg", c) for c in range(1, 8) for i in range(3)]
    root = make_rafdb(entries)
    out = tmp_path / "outputs"
    assert _sweep("rafdb", root, out, ["surprise", "fear"]) == 0
    for name in ("surprise", "fear"):
        # the open class's train (8) and test (3) images are all in the evaluation table
        _check_run(out / f"rafdb_open-{name}_seed0", "rafdb", name, n_open=11)

    assert main(["tables", str(out / "*"), "--out", str(tmp_path / "tables")]) == 0  # the CLI
    tables = report.collect_results(out / "*", out_dir=tmp_path / "tables")
    assert set(tables) == {f"rafdb_{m}_{p}" for m in ("auroc", "fpr95") for p in ("honest", "reference")}
    auroc = tables["rafdb_auroc_honest"]
    assert list(auroc.index) == ["Sur", "Fea", "mean"]
    assert "paper:Ours" in auroc.columns
    paper = published.PUBLISHED["rafdb"]["auroc"]["Ours"]["Sur"]
    assert float(auroc.loc["Sur", "paper:Ours"]) == pytest.approx(paper)
    for stem in tables:
        for ext in ("csv", "md", "tex", "png", "pdf"):
            assert (tmp_path / "tables" / f"{stem}.{ext}").is_file()


def test_affectnet_sweep(make_affectnet, tmp_path):
    # AffectNet folders 0..6 = Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger; 7 (contempt) dropped.
    root = make_affectnet({"Training_Labeled": {c: 8 for c in range(8)}, "Validation": {c: 3 for c in range(8)}})
    out = tmp_path / "outputs"
    assert _sweep("affectnet", root, out, ["anger"]) == 0
    _check_run(out / "affectnet_open-anger_seed0", "affectnet", "anger", n_open=11)
    tables = report.collect_results(out, out_dir=tmp_path / "tables")
    assert "affectnet_auroc_honest" in tables
    assert not any(str(c).startswith("paper:") for c in tables["affectnet_auroc_honest"].columns)
