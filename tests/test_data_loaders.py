"""Loaders map labels on disk onto canonical emotions, and FERDataset behaves as documented."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.data import (
    DataError,
    FERDataset,
    MissingSplitError,
    available_datasets,
    load_affectnet,
    load_dataset,
    load_ferplus,
    load_folders,
    load_rafdb,
)
from ferlib.data.folders import EmptyClassWarning
from ferlib.emotions import BASIC7, Emotion

E = Emotion


# ----------------------------------------------------------------------------- folders


def test_folders_labels_come_from_names_not_folder_order(make_folders):
    # Alphabetical order would give anger target 0 and surprise target 2: canonical
    # values must instead be ANGER=4, NEUTRAL=0, SURPRISE=2.
    root = make_folders({"train": {"anger": 2, "neutral": 3, "surprise": 1}})
    ds = load_folders(root, "train")
    by_folder = {p.parent.name: int(lab) for p, lab in zip(ds.paths, ds.labels)}
    assert by_folder == {"anger": 4, "neutral": 0, "surprise": 2}
    assert ds.classes == (E.NEUTRAL, E.SURPRISE, E.ANGER)
    assert ds.counts() == {E.NEUTRAL: 3, E.SURPRISE: 1, E.ANGER: 2}
    assert ds.labels.dtype == np.int64
    assert ds.name == "folders" and ds.split == "train" and len(ds) == 6


def test_folders_paths_are_absolute_resolved_and_relpaths_posix(make_folders):
    root = make_folders({"valid": {"fear": 2}})
    ds = load_folders(root, "valid")
    assert all(p.is_absolute() and p == p.resolve() and p.is_file() for p in ds.paths)
    assert ds.root == root.resolve()
    assert ds.relpaths() == ["valid/fear/img000.png", "valid/fear/img001.png"]


def test_folders_extensions_case_insensitive_and_non_images_ignored(make_folders, tmp_path):
    root = make_folders({"test": {"happy": 1}})
    folder = root / "test" / "happy"
    formats = {"upper.PNG": "PNG", "mixed.JpG": "JPEG", "other.jpeg": "JPEG", "bitmap.bmp": "BMP"}
    for name, fmt in formats.items():
        Image.new("L", (8, 8)).save(folder / name, format=fmt)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    (root / "test" / "README").write_text("loose file in split dir")
    ds = load_folders(root, "test")
    names = sorted(p.name for p in ds.paths)
    assert names == ["bitmap.bmp", "img000.png", "mixed.JpG", "other.jpeg", "upper.PNG"]
    assert set(ds.labels.tolist()) == {int(E.HAPPINESS)}  # "happy" parsed as an alias


def test_folders_explicit_class_map_and_skip(make_folders):
    root = make_folders({"train": {"0": 2, "1": 1, "junk": 1}})
    ds = load_folders(root, "train", class_map={"0": "sad", "1": E.CONTEMPT, "junk": None})
    assert sorted(ds.labels.tolist()) == [3, 3, 7]
    assert ds.classes == (E.SADNESS, E.CONTEMPT)
    assert not any("junk" in r for r in ds.relpaths())


def test_folders_class_map_classes_include_classes_absent_from_split(make_folders):
    # Train and test must agree on classes even when one split lacks a folder.
    root = make_folders({"test": {"happiness": 1}})
    ds = load_folders(root, "test", class_map={"happiness": "happiness", "fear": "fear"})
    assert ds.classes == (E.HAPPINESS, E.FEAR)
    assert ds.counts() == {E.HAPPINESS: 1, E.FEAR: 0}


def test_registry_dispatches_folders_and_synthetic(make_folders):
    root = make_folders({"train": {"happiness": 1, "sadness": 1}})
    assert {"ferplus", "rafdb", "affectnet", "folders", "synthetic", "subjects"} <= set(available_datasets())
    a = load_dataset("folders", root, "train")
    b = load_dataset("synthetic", root, "train")
    assert a.name == "folders" and b.name == "synthetic"
    assert a.relpaths() == b.relpaths()
    assert np.array_equal(a.labels, b.labels)


# ----------------------------------------------------------------------------- dataset


def test_getitem_returns_uint8_rgb_label_and_index(make_folders):
    root = make_folders({"train": {"fear": 2}}, size=10, mode="L")
    ds = load_folders(root, "train")
    image, label, index = ds[1]
    assert image.dtype == torch.uint8 and image.shape == (3, 10, 10)
    assert label == int(E.FEAR) and index == 1
    # grayscale replicated to three identical channels
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    expected = np.asarray(Image.open(ds.paths[1]))
    assert np.array_equal(image[0].numpy(), expected)
    assert ds[-1][2] == 1  # negative index resolves to the real row


def test_getitem_rgb_channel_order(tmp_path):
    path = tmp_path / "d" / "train" / "anger" / "red.png"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4), (255, 10, 0)).save(path)
    image, _, _ = load_folders(tmp_path / "d", "train")[0]
    assert image[:, 0, 0].tolist() == [255, 10, 0]


def test_fingerprint_stable_location_independent_and_sensitive(make_folders, tmp_path):
    layout = {"train": {"happiness": 2, "sadness": 2}}
    root_a = make_folders(layout, root=tmp_path / "a")
    root_b = make_folders(layout, root=tmp_path / "b")
    fp = load_folders(root_a, "train").fingerprint()
    assert fp == load_folders(root_a, "train").fingerprint()
    assert fp == load_folders(root_b, "train").fingerprint()  # relative paths only
    assert fp != load_folders(root_a, "train", name="synthetic").fingerprint()
    # relabel: move an image to another class folder
    moved = root_b / "train" / "sadness" / "img000.png"
    (root_b / "train" / "happiness" / "img000.png").rename(moved.with_name("moved.png"))
    assert load_folders(root_b, "train").fingerprint() != fp
    # replace a file by one of a different size
    Image.new("L", (30, 30)).save(root_a / "train" / "sadness" / "img001.png")
    assert load_folders(root_a, "train").fingerprint() != fp


def test_subset_keeps_metadata_and_slices(make_ferplus):
    votes = [
        [9, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 8, 2, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 7, 3, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 6, 4, 0, 0, 0, 0, 0],
    ]
    root = make_ferplus({"train": [(f"fer{i}.png", v) for i, v in enumerate(votes)]})
    ds = load_ferplus(root, "train")
    sub = ds.subset([3, 1])
    assert [p.name for p in sub.paths] == ["fer3.png", "fer1.png"]
    assert sub.labels.tolist() == [3, 1]
    assert sub.votes.tolist() == [votes[3], votes[1]]
    assert (sub.name, sub.split, sub.root, sub.classes) == (ds.name, ds.split, ds.root, ds.classes)
    assert sub.fingerprint() != ds.fingerprint()
    mask = ds.subset(ds.labels == 2)
    assert mask.labels.tolist() == [2]


def test_dataset_validates_its_fields(tmp_path):
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        FERDataset("x", "train", tmp_path, [tmp_path / "a", tmp_path / "b"], np.array([0]), BASIC7)
    with pytest.raises(ValueError, match="not in classes"):
        FERDataset("x", "train", tmp_path, [tmp_path / "a"], np.array([7]), BASIC7)
    with pytest.raises(ValueError, match="votes"):
        FERDataset("x", "train", tmp_path, [tmp_path / "a"], np.array([0]), BASIC7, votes=np.zeros((1, 8)))


# ----------------------------------------------------------------------------- FERPlus


def _v(**kw) -> list[int]:
    order = ["neu", "hap", "sur", "sad", "ang", "dis", "fea", "con", "unk", "nf"]
    return [kw.get(k, 0) for k in order]


def test_ferplus_majority_vote_ties_unknown_nf_and_contempt(make_ferplus):
    rows = [
        ("a.png", _v(sur=6, neu=4)),  # surprise
        ("b.png", _v(neu=5, hap=5)),  # tie -> first max (neutral)
        ("c.png", _v(fea=4, dis=4, sad=2)),  # tie -> disgust (comes before fear)
        ("d.png", _v(unk=6, neu=4)),  # unknown wins -> dropped
        ("e.png", _v(nf=10)),  # not a face -> dropped
        ("f.png", _v(con=7, ang=3)),  # contempt: kept only with 8 classes
        ("g.png", _v(ang=5, unk=5)),  # tie with unknown -> anger (first max)
        ("h.png", _v(unk=5, ang=5)),  # unknown column comes later: still anger
    ]
    root = make_ferplus({"train": rows})
    ds7 = load_ferplus(root, "train", num_classes=7)
    assert [p.name for p in ds7.paths] == ["a.png", "b.png", "c.png", "g.png", "h.png"]
    assert ds7.labels.tolist() == [E.SURPRISE, E.NEUTRAL, E.DISGUST, E.ANGER, E.ANGER]
    assert ds7.classes == BASIC7
    assert ds7.votes.shape == (5, 10)
    assert ds7.votes[1].tolist() == _v(neu=5, hap=5)  # raw votes, not normalised
    ds8 = load_ferplus(root, "train", num_classes=8)
    assert [p.name for p in ds8.paths] == ["a.png", "b.png", "c.png", "f.png", "g.png", "h.png"]
    assert ds8.labels[3] == E.CONTEMPT
    assert ds8.classes == tuple(Emotion)


def test_ferplus_excludes_defective_image_by_default(make_ferplus):
    rows = [("fer0033120.png", _v(neu=5, unk=3)), ("fer0033121.png", _v(hap=9))]
    root = make_ferplus({"test": rows, "train": rows})
    assert [p.name for p in load_ferplus(root, "test").paths] == ["fer0033121.png"]
    assert len(load_ferplus(root, "test", exclude=())) == 2
    # the default names FER2013Test/...: the same file name in another split is kept
    assert len(load_ferplus(root, "train")) == 2
    # bare names match in any split
    assert [p.name for p in load_ferplus(root, "train", exclude=["fer0033121.png"]).paths] == ["fer0033120.png"]


def test_ferplus_split_folders(make_ferplus):
    root = make_ferplus(
        {"train": [("t.png", _v(hap=9))], "valid": [("v.png", _v(sad=9))], "test": [("s.png", _v(fea=9))]}
    )
    got = {
        s: (load_ferplus(root, s).relpaths(), load_ferplus(root, s).labels.tolist()) for s in ("train", "valid", "test")
    }
    assert got == {
        "train": (["FER2013Train/t.png"], [1]),
        "valid": (["FER2013Valid/v.png"], [3]),
        "test": (["FER2013Test/s.png"], [6]),
    }


# ----------------------------------------------------------------------------- RAF-DB


def test_rafdb_label_map_every_class(make_rafdb):
    entries = [(f"train_{i:05d}.jpg", i) for i in range(1, 8)] + [("test_0001.jpg", 7)]
    root = make_rafdb(entries)
    ds = load_rafdb(root, "train")
    # RAF-DB 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral
    assert ds.labels.tolist() == [E.SURPRISE, E.FEAR, E.DISGUST, E.HAPPINESS, E.SADNESS, E.ANGER, E.NEUTRAL]
    assert ds.relpaths()[0] == "Image/aligned/train_00001_aligned.jpg"
    assert ds.classes == BASIC7
    test = load_rafdb(root, "test")
    assert test.relpaths() == ["Image/aligned/test_0001_aligned.jpg"]
    assert test.labels.tolist() == [int(E.NEUTRAL)]
    assert load_dataset("rafdb", root, "test").fingerprint() == test.fingerprint()


def test_rafdb_has_no_valid_split(make_rafdb):
    root = make_rafdb([("train_00001.jpg", 1)])
    with pytest.raises(DataError, match="no 'valid' split"):
        load_rafdb(root, "valid")


# ----------------------------------------------------------------------------- AffectNet


def test_affectnet_folder_ids_and_num_classes(make_affectnet):
    root = make_affectnet(
        {"Training_Labeled": {i: 1 for i in range(8)} | {8: 2, 9: 1, 10: 1}, "Validation": {0: 2, 7: 1}}
    )
    ds7 = load_affectnet(root, "train")
    by_folder = {p.parent.name: int(lab) for p, lab in zip(ds7.paths, ds7.labels)}
    assert by_folder == {"0": 0, "1": 1, "2": 3, "3": 2, "4": 6, "5": 5, "6": 4}
    assert ds7.classes == BASIC7
    ds8 = load_affectnet(root, "train", num_classes=8)
    assert len(ds8) == 8 and ds8.counts()[E.CONTEMPT] == 1
    test = load_affectnet(root, "test", num_classes=8)
    assert all(r.startswith("Validation/") for r in test.relpaths())
    # Validation/ is the reported test split, so it is never also the validation split
    with pytest.raises(MissingSplitError, match="no validation split of its own"):
        load_affectnet(root, "valid", num_classes=8)
    assert sorted(test.labels.tolist()) == [0, 0, 7]
    assert load_dataset("affectnet", root, "test").labels.tolist() == [0, 0]


# ----------------------------------------------------------------------------- empty class folders


def test_folders_empty_class_folder_warns_and_drops_the_class_in_every_split(make_folders):
    root = make_folders({"train": {"happiness": 2, "sadness": 2}, "test": {"happiness": 1, "fear": 2, "sadness": 1}})
    (root / "train" / "fear").mkdir()  # empty: no readable image
    (root / "train" / "fear" / "Thumbs.db").write_bytes(b"")  # OS clutter is no image
    with pytest.warns(EmptyClassWarning, match=r"train[/\\]fear.*holds no image.*fear") as caught:
        train = load_folders(root, "train")
    assert train.classes == (E.HAPPINESS, E.SADNESS)
    assert str(root.resolve() / "train" / "fear") in str(caught[0].message)
    with pytest.warns(EmptyClassWarning, match=r"test[/\\]fear: 2 fear image\(s\) left out") as caught:
        test = load_folders(root, "test")
    assert str(root.resolve() / "train") in str(caught[0].message)
    assert test.classes == train.classes  # a class without training images stays out everywhere
    assert test.counts() == {E.HAPPINESS: 1, E.SADNESS: 1}


def test_folders_class_absent_from_train_is_not_kept_by_class_map(make_folders):
    root = make_folders({"train": {"happiness": 1, "sadness": 1}, "valid": {"happiness": 1, "surprise": 1}})
    with pytest.warns(EmptyClassWarning, match=r"valid[/\\]surprise: 1 surprise image"):
        valid = load_folders(root, "valid", class_map={"surprise": "surprise", "fear": "fear"})
    assert valid.classes == (E.HAPPINESS, E.SADNESS)


def test_folders_empty_evaluation_folder_warns_but_keeps_a_trained_class(make_folders, recwarn):
    root = make_folders({"train": {"happiness": 1, "fear": 1}, "test": {"happiness": 1}})
    (root / "test" / "fear").mkdir()
    with pytest.warns(EmptyClassWarning, match=r"test[/\\]fear.*holds no image.*class stays"):
        test = load_folders(root, "test")
    assert test.classes == (E.HAPPINESS, E.FEAR)
    load_folders(root, "train")
    assert not [w for w in recwarn if issubclass(w.category, EmptyClassWarning)]  # nothing to say


def test_folders_without_train_split_keep_mapped_classes_but_not_empty_ones(make_folders):
    root = make_folders({"test": {"happiness": 1}})
    (root / "test" / "anger").mkdir()
    with pytest.warns(EmptyClassWarning, match="anger"):
        ds = load_folders(root, "test", class_map={"happiness": "happiness", "fear": "fear"})
    assert ds.classes == (E.HAPPINESS, E.FEAR)


def test_empty_class_warning_is_a_user_warning():
    assert issubclass(EmptyClassWarning, UserWarning)
