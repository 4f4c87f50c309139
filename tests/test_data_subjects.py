"""Data sets without an official split (CK+, JAFFE, KDEF, Oulu-CASIA) are split by subject:
no person is on both sides of train/test, nor of train/validation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ferlib.data import DataError, MissingSplitError, load_dataset, load_subjects
from ferlib.data.folders import EmptyClassWarning
from ferlib.data.prepare import load_splits
from ferlib.data.subjects import SUBJECT_PATTERNS, subjects_of
from ferlib.emotions import Emotion

CLASSES = ("anger", "happiness", "sadness")


def ck_names(subjects, per_subject: int = 2) -> list[str]:
    """CK+ style names ``S<subject>_<sequence>_<frame>.png``."""
    return [f"S{s:03d}_{q:03d}_{q * 7 + 11:08d}.png" for s in subjects for q in range(1, per_subject + 1)]


def _ck_root(make_subjects, n_subjects: int = 10, folders=CLASSES):
    # every subject posed every expression: a frame-level split would put each person
    # on both sides
    return make_subjects({f: ck_names(range(1, n_subjects + 1)) for f in folders})


def _subject(path) -> str:
    return path.name.split("_")[0]


def test_subject_presets_on_each_naming_scheme(tmp_path):
    cases = {
        "ck+": (["S005_001_00000011.png", "S010_004_00000019.png"], ["S005", "S010"]),
        "kdef": (["AF01ANS.JPG", "BF01ANS.JPG", "AM12HAS.JPG"], ["F01", "F01", "M12"]),
        "jaffe": (["KA.AN1.39.tiff", "YM.HA2.53.tiff"], ["KA", "YM"]),
        "oulu": (["P001_anger_000.jpeg", "P012_happiness_017.jpeg"], ["P001", "P012"]),
    }
    assert set(cases) == set(SUBJECT_PATTERNS)
    for preset, (names, expected) in cases.items():
        assert subjects_of(names, preset, tmp_path) == expected, preset
        assert subjects_of(names, "auto", tmp_path) == expected, preset
    # a custom regex: the subject is group 1
    assert subjects_of(["id7-x.png", "id12-y.png"], r"^id(\d+)-", tmp_path) == ["7", "12"]


def test_unmatched_name_and_bad_pattern_fail_naming_them(tmp_path):
    with pytest.raises(DataError, match="finds no subject") as info:
        subjects_of(["S005_001_00000011.png", "photo.png"], "ck+", tmp_path)
    assert info.value.path.name == "photo.png"
    with pytest.raises(DataError, match="no subject pattern"):
        subjects_of(["photo.png"], "auto", tmp_path)
    with pytest.raises(DataError, match="needs a group"):
        subjects_of(["a.png"], r"^S\d+", tmp_path)
    with pytest.raises(DataError, match="not a regular expression"):
        subjects_of(["a.png"], r"^(S", tmp_path)


def test_held_out_subjects_never_cross_train_and_test(make_subjects):
    root = _ck_root(make_subjects)
    for split_seed in range(4):
        train = load_subjects(root, "train", test_fraction=0.3, split_seed=split_seed)
        test = load_subjects(root, "test", test_fraction=0.3, split_seed=split_seed)
        assert not {_subject(p) for p in train.paths} & {_subject(p) for p in test.paths}
        assert len(train) + len(test) == 10 * 2 * len(CLASSES)
        assert set(test.groups.tolist()) == {_subject(p) for p in test.paths}
        assert 0.2 <= len(test) / (len(train) + len(test)) <= 0.4
    a = load_subjects(root, "test", split_seed=0).relpaths()
    assert a == load_subjects(root, "test", split_seed=0).relpaths()  # seeded
    assert any(load_subjects(root, "test", split_seed=s).relpaths() != a for s in range(1, 5))


def test_folds_partition_every_sample_once_and_keep_subjects_together(make_subjects):
    # unusual folder names, remapped: the remap must keep every sample
    folders = {"AN": "anger", "HA": "happiness", "SA": "sadness"}
    root = make_subjects({f: ck_names(range(1, 8), per_subject=3) for f in folders})
    n_total = 7 * 3 * len(folders)
    seen: list[str] = []
    for fold in range(3):
        options = dict(class_map=folders, folds=3, fold=fold, split_seed=1)
        train = load_dataset("subjects", root, "train", **options)
        test = load_dataset("subjects", root, "test", **options)
        assert len(train) + len(test) == n_total
        assert not set(train.relpaths()) & set(test.relpaths())
        assert not set(train.groups.tolist()) & set(test.groups.tolist())
        assert len(test) > 0
        seen += test.relpaths()
    assert len(seen) == n_total and len(set(seen)) == n_total  # each sample tested exactly once
    # what determines the rows determines the data fingerprint (and so every cache key)
    prints = {load_subjects(root, "test", class_map=folders, folds=3, fold=f).fingerprint() for f in range(3)}
    assert len(prints) == 3
    assert [c.label for c in load_subjects(root, "train", class_map=folders).classes] == [
        "happiness",
        "sadness",
        "anger",
    ]


def test_validation_is_carved_by_whole_subjects(make_subjects, tmp_path, capsys):
    root = _ck_root(make_subjects, n_subjects=12)
    for seed in range(3):
        s = load_splits(
            "subjects",
            str(root),
            "anger",
            8,
            cache_dir=None,
            val_fraction=0.25,
            seed=seed,
            data_options={"folds": 4, "fold": 1},
        )
        train_subjects = {p.split("/")[-1].split("_")[0] for p in np.asarray(s.train.paths)[s.train_rows]}
        valid_subjects = {p.split("/")[-1].split("_")[0] for p in s.valid.paths}
        test_subjects = {p.split("/")[-1].split("_")[0] for p in s.test.paths}
        assert valid_subjects and train_subjects
        assert not train_subjects & valid_subjects
        assert not (train_subjects | valid_subjects) & test_subjects
        assert "whole subjects" in s.validation_source
    assert "whole subjects" in capsys.readouterr().out


def test_subject_loader_options_fail_early(make_subjects):
    root = _ck_root(make_subjects, n_subjects=4)
    with pytest.raises(MissingSplitError):
        load_subjects(root, "valid")
    with pytest.raises(DataError, match="takes no option 'fold_count'.*folds, fold"):
        load_dataset("subjects", root, "train", fold_count=3)
    with pytest.raises(DataError, match="fold must be in 0..2"):
        load_subjects(root, "train", folds=3, fold=3)
    with pytest.raises(DataError, match="folds must be 0"):
        load_subjects(root, "train", folds=1)
    with pytest.raises(DataError, match="folds=5 but only 4 subjects"):
        load_subjects(root, "train", folds=5)
    with pytest.raises(DataError, match="test_fraction"):
        load_subjects(root, "train", test_fraction=1.0)


def test_empty_class_folder_warns_and_leaves_the_class_out_of_both_splits(make_subjects):
    root = _ck_root(make_subjects, n_subjects=6)
    (root / "fear").mkdir()
    for split in ("train", "test"):
        with pytest.warns(EmptyClassWarning, match=r"fear: class folder \(fear\) holds no image") as caught:
            ds = load_subjects(root, split, split_seed=0)
        assert str(root.resolve() / "fear") in str(caught[0].message)
        assert [c.label for c in ds.classes] == ["happiness", "sadness", "anger"]


def test_class_of_test_subjects_only_is_left_out_of_both_splits(make_subjects):
    layout = {f: ck_names(range(1, 7)) for f in CLASSES}
    layout["surprise"] = ck_names([1])  # one person posed it: in one fold it has no training image
    root = make_subjects(layout)
    outcomes = []
    for fold in range(3):
        options = dict(folds=3, fold=fold, split_seed=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train = load_subjects(root, "train", **options)
            test = load_subjects(root, "test", **options)
        empty = [w for w in caught if issubclass(w.category, EmptyClassWarning)]
        assert train.classes == test.classes  # both splits agree, always
        if "S001" in set(test.groups.tolist()):  # its fold: surprise has no training image
            assert Emotion.SURPRISE not in train.classes
            assert not (test.labels == int(Emotion.SURPRISE)).any()
            assert len(empty) == 1 and "surprise: 2 surprise image(s) left out" in str(empty[0].message)
            outcomes.append("dropped")
        else:
            assert Emotion.SURPRISE in train.classes and not empty
            outcomes.append("kept")
    assert sorted(outcomes) == ["dropped", "kept", "kept"]
