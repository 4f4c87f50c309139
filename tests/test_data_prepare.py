"""The pipeline's data step (``ferlib.data.prepare.load_splits``): validation never comes from
the test split, only an absent validation split is carved, class maps and loader options
reach the loaders, and labels outside the experiment's classes are dropped before decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ferlib import stages
from ferlib.data import DataError
from ferlib.data import prepare as prepare_module
from ferlib.data.prepare import Splits, load_splits
from ferlib.data.synthetic import SyntheticConfig, write_synthetic
from ferlib.emotions import Emotion

SIZE = 8


def _votes(column: int) -> list[int]:
    votes = [0] * 10
    votes[column] = 9
    return votes


def _ferplus(make_ferplus, with_valid: bool = True) -> Path:
    # vote columns: 0 neutral, 1 happiness, 6 fear
    def rows(prefix: str, n: int):
        return [(f"{prefix}{c}_{i}.png", _votes(c)) for c in (0, 1, 6) for i in range(n)]

    layout = {"train": rows("tr", 5), "test": rows("te", 2)}
    if with_valid:
        layout["valid"] = rows("va", 2)
    return make_ferplus(layout)


def _layouts(tmp_path, make_ferplus, make_rafdb, make_affectnet, make_folders, make_subjects):
    """dataset name -> (loader name, root) for a tiny layout of every loader."""
    classes = {"neutral": 5, "happiness": 5, "fear": 5}
    small = {k: 2 for k in classes}
    synthetic = write_synthetic(
        tmp_path / "synthetic", SyntheticConfig(n_train=21, n_valid=14, n_test=14, image_size=16)
    )
    subjects = {c: [f"S{s:03d}_001_0000001{k}.png" for s in range(1, 9) for k in range(2)] for c in classes}
    return {
        "ferplus": ("ferplus", _ferplus(make_ferplus)),
        "rafdb": (
            "rafdb",
            make_rafdb(
                [(f"train_{c}{i:04d}.jpg", c) for c in (2, 4, 7) for i in range(5)]
                + [(f"test_{c}{i:03d}.jpg", c) for c in (2, 4, 7) for i in range(2)]
            ),
        ),
        "affectnet": (
            "affectnet",
            make_affectnet({"Training_Labeled": {0: 5, 1: 5, 4: 5}, "Validation": {0: 2, 1: 2, 4: 2}}),
        ),
        "folders": ("folders", make_folders({"train": classes, "valid": small, "test": small}, root=tmp_path / "f1")),
        "folders without valid": ("folders", make_folders({"train": classes, "test": small}, root=tmp_path / "f2")),
        "synthetic": ("synthetic", synthetic),
        "subjects": ("subjects", make_subjects(subjects)),
    }


CARVED = {"rafdb", "affectnet", "folders without valid", "subjects"}


def _rows_paths(s: Splits, rows) -> set[str]:
    return {s.train.paths[i] for i in np.asarray(rows).tolist()}


@pytest.mark.parametrize("open_class", [None, "fear"])
def test_validation_never_overlaps_test_nor_training_rows_for_every_loader(
    tmp_path, make_ferplus, make_rafdb, make_affectnet, make_folders, make_subjects, open_class
):
    layouts = _layouts(tmp_path, make_ferplus, make_rafdb, make_affectnet, make_folders, make_subjects)
    for name, (dataset, root) in layouts.items():
        s = load_splits(dataset, str(root), open_class, SIZE, cache_dir=None, val_fraction=0.2, seed=3)
        valid, test = set(s.valid.paths), set(s.test.paths)
        assert len(s.valid) > 0, name
        assert not valid & test, f"{name}: validation rows are test rows"
        trained = _rows_paths(s, s.train_rows)
        assert not valid & trained, f"{name}: validation rows are training rows"
        assert not trained & test, name
        if name in CARVED:
            assert "carved" in s.validation_source, name
            assert valid <= set(s.train.paths), name  # carved from the training split
            assert not valid & _rows_paths(s, s.split.eval_train_index), name  # nor evaluated as open
            rows, _ = s.validation()
            assert len(rows) == len(s.valid), name  # only close classes are carved
        else:
            assert "own validation split" in s.validation_source, name
        # training rows are exactly the protocol's close rows minus the carve
        assert set(s.train_rows.tolist()) <= set(s.split.train_index.tolist()), name


def test_carve_is_stratified_seeded_and_independent_of_the_open_class(make_affectnet):
    root = make_affectnet({"Training_Labeled": {0: 10, 1: 10, 4: 10}, "Validation": {0: 2, 1: 2, 4: 2}})
    a = load_splits("affectnet", str(root), None, SIZE, cache_dir=None, val_fraction=0.2, seed=0)
    assert sorted(a.valid.labels.tolist()) == [0, 0, 1, 1, 6, 6]  # 20% of every class
    b = load_splits("affectnet", str(root), "fear", SIZE, cache_dir=None, val_fraction=0.2, seed=0)
    # same rows held out for the classes both runs train on
    assert set(b.valid.paths) == {p for p, y in zip(a.valid.paths, a.valid.labels.tolist()) if y != 6}
    c = load_splits("affectnet", str(root), None, SIZE, cache_dir=None, val_fraction=0.2, seed=1)
    assert set(c.valid.paths) != set(a.valid.paths)
    assert a.fingerprint == c.fingerprint  # same data; the carve is keyed by (seed, val_fraction)


def test_corrupt_valid_label_file_raises_instead_of_carving(make_ferplus):
    root = _ferplus(make_ferplus)
    label_file = root / "FER2013Valid" / "label.csv"
    label_file.write_text(label_file.read_text() + "broken line\n")
    with pytest.raises(DataError, match="expected 12 fields") as info:
        load_splits("ferplus", str(root), None, SIZE, cache_dir=None)
    assert info.value.path == label_file.resolve()
    # a validation folder without its label file is broken, not absent
    label_file.unlink()
    with pytest.raises(DataError, match="label file not found"):
        load_splits("ferplus", str(root), None, SIZE, cache_dir=None)


def test_absent_valid_split_is_carved_and_logged(make_ferplus, capsys):
    root = _ferplus(make_ferplus, with_valid=False)
    s = load_splits("ferplus", str(root), None, SIZE, cache_dir=None, val_fraction=0.2, seed=0)
    assert "carved" in s.validation_source and all(p.startswith("FER2013Train/") for p in s.valid.paths)
    assert "validation = 20% of the training split carved" in capsys.readouterr().out


def test_extra_class_folder_is_dropped_before_decoding_with_a_count(make_folders, capsys, monkeypatch):
    root = make_folders(
        {
            "train": {"happiness": 4, "fear": 4, "contempt": 3},
            "valid": {"happiness": 1, "fear": 1, "contempt": 1},
            "test": {"happiness": 2, "fear": 2, "contempt": 2},
        }
    )
    decoded = []
    real = prepare_module.build_cache
    monkeypatch.setattr(prepare_module, "build_cache", lambda ds, *a, **k: decoded.append(ds) or real(ds, *a, **k))
    s = load_splits("folders", str(root), "fear", SIZE, cache_dir=None)
    assert all(int(Emotion.CONTEMPT) not in ds.labels.tolist() for ds in decoded)  # never decoded
    assert s.dropped == {"train/contempt": 3, "valid/contempt": 1, "test/contempt": 2}
    assert "dropped 3 contempt sample(s)" in capsys.readouterr().out
    assert s.label_map.names == ["happiness"]
    # eight classes keep it
    s8 = load_splits("folders", str(root), "fear", SIZE, cache_dir=None, num_classes=8)
    assert s8.label_map.names == ["happiness", "contempt"] and not s8.dropped


def test_class_map_reaches_folder_loaders_and_changes_the_fingerprint(make_folders):
    root = make_folders(
        {
            "train": {"0_neutral": 4, "1_happy": 4, "2_fear": 4, "extra": 2},
            "test": {"0_neutral": 2, "1_happy": 2, "2_fear": 2, "extra": 1},
        }
    )
    with pytest.raises(DataError, match="'0_neutral' is not an emotion"):
        load_splits("folders", str(root), None, SIZE, cache_dir=None)
    cmap = {"0_neutral": "neutral", "1_happy": "happiness", "2_fear": "fear", "extra": "drop"}
    s = load_splits("folders", str(root), "fear", SIZE, cache_dir=None, class_map=cmap)
    assert s.label_map.names == ["neutral", "happiness"] and len(s.test) == 6
    assert not any("extra" in p for p in s.train.paths + s.test.paths)
    other = load_splits("folders", str(root), "fear", SIZE, cache_dir=None, class_map={**cmap, "extra": "sad"})
    assert len(other.test) == 7 and other.fingerprint != s.fingerprint
    again = load_splits("folders", str(root), "fear", SIZE, cache_dir=None, class_map=dict(cmap))
    assert again.fingerprint == s.fingerprint


def test_class_map_reaches_label_file_loaders(make_ferplus, make_rafdb, make_affectnet):
    rows = [("a.png", _votes(7)), ("b.png", _votes(1)), ("c.png", _votes(0))]  # contempt, happy, neutral
    root = make_ferplus({"train": rows, "valid": rows, "test": rows})
    s = load_splits("ferplus", str(root), None, SIZE, cache_dir=None, class_map={"contempt": "disgust"})
    assert sorted(s.test.labels.tolist()) == [0, 1, 5]
    root = make_rafdb(
        [(f"train_{c}{i:04d}.jpg", c) for c in (4, 7) for i in range(3)]
        + [(f"test_{c}{i:03d}.jpg", c) for c in (4, 7) for i in range(2)]
    )
    s = load_splits("rafdb", str(root), None, SIZE, cache_dir=None, class_map={"7": "drop"})
    assert set(s.train.labels.tolist()) == {int(Emotion.HAPPINESS)}
    with pytest.raises(DataError, match="class_map key '8' is not a label.*1, 2, 3"):
        load_splits("rafdb", str(root), None, SIZE, cache_dir=None, class_map={"8": "fear"})
    root = make_affectnet({"Training_Labeled": {0: 3, 7: 3}, "Validation": {0: 2, 7: 2}})
    s = load_splits("affectnet", str(root), None, SIZE, cache_dir=None, class_map={"7": "anger"})
    assert sorted(set(s.test.labels.tolist())) == [0, int(Emotion.ANGER)]


def test_unknown_data_option_fails_before_any_decoding(make_folders, monkeypatch):
    root = make_folders({"train": {"happiness": 2, "fear": 2}, "test": {"happiness": 1, "fear": 1}})

    def never(*args, **kwargs):
        raise AssertionError("decoded before the options were checked")

    monkeypatch.setattr(prepare_module, "build_cache", never)
    with pytest.raises(DataError, match="takes no option 'folds'; its options are: class_map, name"):
        load_splits("folders", str(root), None, SIZE, cache_dir=None, data_options={"folds": 5})
    with pytest.raises(DataError, match="class_map given both"):
        load_splits("folders", str(root), None, SIZE, cache_dir=None, class_map={}, data_options={"class_map": {}})


def test_stage_01_records_where_validation_came_from(make_affectnet, tmp_path):
    root = make_affectnet({"Training_Labeled": {0: 6, 1: 6, 4: 6}, "Validation": {0: 2, 1: 2, 4: 2}})
    run_dir = tmp_path / "run"
    stages.train_close_set(
        dataset="affectnet",
        data_root=str(root),
        open_class="fear",
        seed=0,
        run_dir=str(run_dir),
        input_size=32,
        epochs=1,
        batch_size=8,
        cache_dir=None,
        progress=False,
        class_map={"0": "neutral"},
        data_options={},
    )
    results = json.loads((run_dir / "01_close_set" / "results.json").read_text())
    assert "carved" in results["validation"] and results["n_val"] == 2
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert "carved" in manifest["data"]["validation"]


def test_stratified_subset_keeps_each_class_share_and_every_class():
    from ferlib.data.prepare import stratified_subset

    rows = np.arange(100, 1100)
    labels = np.r_[np.zeros(700, int), np.ones(290, int), np.full(10, 2)]
    kept = stratified_subset(rows, labels, 100)
    assert len(kept) == 100 and len(set(kept)) == 100 and set(kept) <= set(rows)
    counts = np.bincount(labels[np.searchsorted(rows, kept)], minlength=3)
    assert counts.tolist() == [70, 29, 1]
    assert np.array_equal(kept, stratified_subset(rows, labels, 100))  # a fixed seed
    assert np.array_equal(stratified_subset(rows, labels, 5000), rows)


def test_max_train_trains_on_a_fixed_subset_and_keeps_every_other_row(tmp_path, capsys):
    root = write_synthetic(tmp_path / "syn", SyntheticConfig(n_train=140, n_valid=28, n_test=28, seed=0))
    full = load_splits("synthetic", str(root), None, SIZE, cache_dir=None)
    small = [
        load_splits("synthetic", str(root), None, SIZE, cache_dir=None, seed=s, data_options={"max_train": 70})
        for s in (0, 1)
    ]
    assert "training on 70 of 140 images (max_train=70)" in capsys.readouterr().out
    assert len(small[0].train_rows) == 70 and set(small[0].train_rows) <= set(full.train_rows)
    assert np.array_equal(small[0].train_rows, small[1].train_rows)  # the run seed draws nothing
    assert np.array_equal(small[0].valid.fingerprint, full.valid.fingerprint) and len(small[0].test) == len(full.test)
    _, targets = small[0].training()
    _, all_targets = full.training()
    half = np.bincount(all_targets, minlength=7) / 2  # each class keeps its share, to the rounding
    assert np.abs(np.bincount(targets, minlength=7) - half).max() <= 1
    assert small[0].fingerprint != full.fingerprint
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="max_train"):
            load_splits("synthetic", str(root), None, SIZE, cache_dir=None, data_options={"max_train": bad})
