"""Bad input fails early with a DataError naming the file (and line where there is one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferlib.data import DataError, load_dataset, load_ferplus, load_folders, load_rafdb

GOOD = [5, 1, 0, 0, 0, 0, 0, 0, 0, 0]


def _ferplus_with_label_lines(make_ferplus, lines: list[str]) -> tuple[Path, Path]:
    """A FERPlus root whose train label.csv is ``lines`` (images a.png, b.png exist)."""
    root = make_ferplus({"train": [("a.png", GOOD), ("b.png", GOOD)]})
    label_file = root / "FER2013Train" / "label.csv"
    label_file.write_text("\n".join(lines) + "\n")
    return root, label_file


def _rafdb_with_label_lines(make_rafdb, lines: list[str]) -> tuple[Path, Path]:
    root = make_rafdb([("train_00001.jpg", 1), ("train_00002.jpg", 2)])
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text("\n".join(lines) + "\n")
    return root, label_file


def test_data_error_is_a_value_error_with_location():
    err = DataError("x/label.csv", "bad", line=3)
    assert isinstance(err, ValueError)
    assert str(err) == "x/label.csv, line 3: bad" and err.line == 3


@pytest.mark.parametrize("name", ["ferplus", "rafdb", "affectnet", "folders", "synthetic", "subjects"])
def test_missing_root_names_the_root(name, tmp_path):
    missing = tmp_path / "no_such_root"
    with pytest.raises(DataError, match="no_such_root") as info:
        load_dataset(name, missing, "train")
    assert info.value.path == missing


def test_unknown_dataset_name_lists_known(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'fer2013'.*ferplus"):
        load_dataset("fer2013", tmp_path, "train")


def test_unknown_split_and_bad_num_classes(make_ferplus):
    root = make_ferplus({"train": [("a.png", GOOD)]})
    with pytest.raises(DataError, match="unknown split 'training'"):
        load_ferplus(root, "training")
    with pytest.raises(DataError, match="num_classes must be 7 or 8"):
        load_ferplus(root, "train", num_classes=6)


def test_ferplus_missing_label_file(make_ferplus):
    root = make_ferplus({"train": [("a.png", GOOD)]})
    with pytest.raises(DataError, match="label file not found") as info:
        load_ferplus(root, "valid")
    assert info.value.path == root.resolve() / "FER2013Valid" / "label.csv"


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('b.png,"(0, 0, 48, 48)",1,2,3', "expected 12 fields"),
        ('b.png,"(0, 0, 48, 48)",1,x,0,0,0,0,0,0,0,0', "must be integers"),
        (',"(0, 0, 48, 48)",1,0,0,0,0,0,0,0,0,0', "empty image name"),
    ],
)
def test_ferplus_malformed_line_names_file_and_line(make_ferplus, bad_line, message):
    good = 'a.png,"(0, 0, 48, 48)",' + ",".join(map(str, GOOD))
    root, label_file = _ferplus_with_label_lines(make_ferplus, [good, "", bad_line])
    with pytest.raises(DataError, match=message) as info:
        load_ferplus(root, "train")
    assert info.value.line == 3  # blank line 2 is skipped but still counted
    assert info.value.path == label_file.resolve()
    assert f"{label_file.resolve()}, line 3" in str(info.value)


@pytest.mark.parametrize("votes", ["5,-1,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,0,0,0"])
def test_ferplus_votes_out_of_range(make_ferplus, votes):
    root, label_file = _ferplus_with_label_lines(make_ferplus, [f'a.png,"(0, 0, 48, 48)",{votes}'])
    with pytest.raises(DataError, match="out of range") as info:
        load_ferplus(root, "train")
    assert info.value.line == 1


def test_ferplus_label_names_absent_image(make_ferplus):
    good = 'a.png,"(0, 0, 48, 48)",' + ",".join(map(str, GOOD))
    ghost = 'ghost.png,"(0, 0, 48, 48)",' + ",".join(map(str, GOOD))
    root, label_file = _ferplus_with_label_lines(make_ferplus, [good, ghost])
    with pytest.raises(DataError, match="'ghost.png' not found") as info:
        load_ferplus(root, "train")
    assert (info.value.path, info.value.line) == (label_file.resolve(), 2)


def test_rafdb_missing_label_file(make_rafdb):
    root = make_rafdb([("train_00001.jpg", 1)])
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(DataError, match="label file not found") as info:
        load_rafdb(root, "train")
    assert info.value.path.name == "list_patition_label.txt"


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("train_00002.jpg", "expected '<image name> <label>'"),
        ("train_00002.jpg 3 extra", "expected '<image name> <label>'"),
        ("train_00002.jpg sad", "must be an integer"),
        ("val_00002.jpg 3", "neither 'train_' nor 'test_'"),
    ],
)
def test_rafdb_malformed_line(make_rafdb, bad_line, message):
    root, label_file = _rafdb_with_label_lines(make_rafdb, ["train_00001.jpg 1", bad_line])
    with pytest.raises(DataError, match=message) as info:
        load_rafdb(root, "train")
    assert (info.value.path, info.value.line) == (label_file.resolve(), 2)


@pytest.mark.parametrize("label", [0, 8, -1])
def test_rafdb_label_out_of_range(make_rafdb, label):
    root, label_file = _rafdb_with_label_lines(make_rafdb, ["train_00001.jpg 1", f"train_00002.jpg {label}"])
    with pytest.raises(DataError, match=f"label {label} out of range") as info:
        load_rafdb(root, "train")
    assert info.value.line == 2


def test_rafdb_label_names_absent_image(make_rafdb):
    root, label_file = _rafdb_with_label_lines(make_rafdb, ["train_00001.jpg 1", "test_09999.jpg 4"])
    load_rafdb(root, "train")  # the test-split row is not looked at for train...
    with pytest.raises(DataError, match="test_09999_aligned.jpg' not found") as info:
        load_rafdb(root, "test")  # ...but is checked when the test split is loaded
    assert info.value.line == 2


def test_folders_unknown_folder_name(make_folders):
    root = make_folders({"train": {"happiness": 1, "bored": 1}})
    with pytest.raises(DataError, match="'bored' is not an emotion") as info:
        load_folders(root, "train")
    assert info.value.path == root.resolve() / "train" / "bored"


def test_folders_folder_missing_from_class_map(make_folders):
    root = make_folders({"train": {"h": 1, "s": 1}})
    with pytest.raises(DataError, match="'s' is not in class_map"):
        load_folders(root, "train", class_map={"h": "happiness"})
    with pytest.raises(DataError, match="class_map\\['s'\\]"):
        load_folders(root, "train", class_map={"h": "happiness", "s": "sleepy"})


def test_folders_missing_or_empty_split(make_folders):
    root = make_folders({"train": {"happiness": 1}})
    with pytest.raises(DataError, match="split folder not found"):
        load_folders(root, "test")
    (root / "valid" / "sadness").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_folders(root, "valid")


def test_affectnet_unknown_folder(make_affectnet):
    root = make_affectnet({"Training_Labeled": {0: 1, "happy": 1}})
    with pytest.raises(DataError, match="'happy' is not an AffectNet expression id"):
        load_dataset("affectnet", root, "train")
