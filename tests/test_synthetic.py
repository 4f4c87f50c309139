"""Tests for the embedded synthetic face-expression data set (ferlib.data.synthetic)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from ferlib.data import synthetic as syn
from ferlib.data.synthetic import (
    AU_NAMES,
    PROTOTYPES,
    SyntheticConfig,
    class_counts,
    content_hash,
    generate_images,
    render_face,
    save_preview,
    write_synthetic,
)
from ferlib.emotions import BASIC7, Emotion

# balanced, so every class has exactly n / 7 samples (the default shares are FERPlus's)
SMALL = SyntheticConfig(n_train=70, n_valid=14, n_test=21, seed=3, class_shares=None)


@pytest.fixture(scope="module")
def small_data():
    return generate_images(SMALL)


# ---------------------------------------------------------------- arrays


def test_shapes_dtypes_and_labels(small_data):
    assert set(small_data) == {"train", "valid", "test"}
    for split, (images, labels) in small_data.items():
        n = SMALL.split_size(split)
        assert images.shape == (n, 48, 48) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert set(labels.tolist()) == {int(e) for e in BASIC7}  # canonical values
        assert int(Emotion.CONTEMPT) not in labels


def test_same_seed_identical_different_seed_different(small_data):
    again = generate_images(SMALL)
    for split in small_data:
        np.testing.assert_array_equal(again[split][0], small_data[split][0])
        np.testing.assert_array_equal(again[split][1], small_data[split][1])
    other = generate_images(SyntheticConfig(n_train=70, n_valid=14, n_test=21, seed=4, class_shares=None))
    for split in small_data:
        assert not np.array_equal(other[split][0], small_data[split][0])
    assert content_hash(other) != content_hash(small_data)
    assert content_hash(again) == content_hash(small_data)


def test_splits_are_independent_streams(small_data):
    """Changing n_train must not change the test images (seeded from (seed, split))."""
    bigger = generate_images(SyntheticConfig(n_train=140, n_valid=14, n_test=21, seed=3, class_shares=None))
    np.testing.assert_array_equal(bigger["test"][0], small_data["test"][0])
    assert not np.array_equal(small_data["train"][0][:5], small_data["test"][0][:5])


def test_balanced_counts_and_rounding(small_data):
    for split, (_, labels) in small_data.items():
        counts = np.bincount(labels, minlength=8)
        expected = SMALL.split_size(split) // 7
        assert all(counts[int(e)] == expected for e in BASIC7)
    # 10 = 7 + 3: the first three classes in BASIC7 order get the extra sample
    assert list(class_counts(10).values()) == [2, 2, 2, 1, 1, 1, 1]
    _, labels = generate_images(SyntheticConfig(n_train=10, n_valid=0, n_test=0, class_shares=None))["train"]
    assert [int((labels == int(e)).sum()) for e in BASIC7] == [2, 2, 2, 1, 1, 1, 1]
    empty_images, empty_labels = generate_images(SyntheticConfig(n_valid=0, n_train=0, n_test=0))["valid"]
    assert empty_images.shape == (0, 48, 48) and empty_labels.shape == (0,)


def test_default_shares_are_ferplus_and_every_class_is_present():
    counts = class_counts(2100, SyntheticConfig().class_shares)
    assert sum(counts.values()) == 2100
    # neutral > happiness > surprise ~ sadness > anger > fear > disgust, as on FERPlus
    order = sorted(counts, key=counts.get, reverse=True)
    assert order[:2] == [Emotion.NEUTRAL, Emotion.HAPPINESS] and order[-2:] == [Emotion.FEAR, Emotion.DISGUST]
    shares = np.array(list(counts.values())) / 2100
    # within rounding and the one-sample floor per class
    np.testing.assert_allclose(shares, syn.FERPLUS_TRAIN_SHARES, atol=8 / 2100)
    # small splits keep one sample of every class (disgust's 0.7% would round to zero)
    assert min(class_counts(21, syn.FERPLUS_TRAIN_SHARES).values()) == 1
    assert sum(class_counts(21, syn.FERPLUS_TRAIN_SHARES).values()) == 21
    _, labels = generate_images(SyntheticConfig(n_train=0, n_valid=0, n_test=50))["test"]
    assert set(labels.tolist()) == {int(e) for e in BASIC7}
    # shares need not sum to one; bad ones are refused with the field named
    assert class_counts(14, (2, 2, 2, 2, 2, 2, 2)) == class_counts(14)
    for bad in [(1, 2), (1, 1, 1, 1, 1, 1, -1), (0,) * 7, "neutral"]:
        with pytest.raises(ValueError, match="class_shares"):
            SyntheticConfig(class_shares=bad)
    assert SyntheticConfig.from_dict(SyntheticConfig().to_dict()) == SyntheticConfig()
    assert SyntheticConfig.from_dict(SMALL.to_dict()) == SMALL


@pytest.mark.ferplus
def test_ferplus_train_counts_match_the_real_files(ferplus_root):
    from ferlib.data.ferplus import load_ferplus

    labels = load_ferplus(ferplus_root, "train").labels
    counts = tuple(int((np.asarray(labels) == int(e)).sum()) for e in BASIC7)
    assert counts == syn.FERPLUS_TRAIN_COUNTS


def test_images_vary_within_a_class(small_data):
    images, labels = small_data["train"]
    for e in BASIC7:
        cls = images[labels == int(e)].astype(np.float32)
        assert len(cls) == 10
        # no two faces of a class are the same, and they differ by more than noise
        flat = cls.reshape(len(cls), -1)
        dists = np.abs(flat[:, None, :] - flat[None, :, :]).mean(-1)
        off_diag = dists[~np.eye(len(cls), dtype=bool)]
        assert off_diag.min() > 3.0
        # identity varies: mean brightness (skin / background) spreads out
        assert cls.mean(axis=(1, 2)).std() > 5.0
    assert images.min() < 40 and images.max() > 215  # uses the grey range


def test_other_image_size():
    images, _ = generate_images(SyntheticConfig(n_train=7, n_valid=0, n_test=0, image_size=32))["train"]
    assert images.shape == (7, 32, 32)


def test_config_validation():
    with pytest.raises(ValueError, match="n_train"):
        SyntheticConfig(n_train=-1)
    with pytest.raises(ValueError, match="image_size"):
        SyntheticConfig(image_size=8)
    with pytest.raises(ValueError, match="intensity"):
        SyntheticConfig(intensity=(0.9, 0.2))
    with pytest.raises(ValueError, match="pixel_noise"):
        SyntheticConfig(pixel_noise=-1.0)
    cfg = SyntheticConfig(intensity=[0, 1])  # lists (from JSON) become float tuples
    assert cfg.intensity == (0.0, 1.0)
    assert SyntheticConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_docstring_table_matches_prototypes():
    doc = syn.__doc__
    header = next(line for line in doc.splitlines() if line.strip().startswith("emotion"))
    columns = header.split()[1:]
    assert tuple(columns) == AU_NAMES
    for e in BASIC7:
        row = next(line for line in doc.splitlines() if re.match(rf"\s+{e.label}\s+[.0-9]", line))
        values = row.split()[1:]
        assert len(values) == len(AU_NAMES), e
        table = {au: float(v) for au, v in zip(AU_NAMES, values) if v != "."}
        assert table == PROTOTYPES[e], e


def test_render_face_aus_change_the_face():
    neutral = render_face({}).astype(int)
    for au in ("AU1", "AU4", "AU5", "AU9", "AU12", "AU15", "AU24", "AU26"):
        moved = render_face({au: 1.0}).astype(int)
        assert np.abs(moved - neutral).sum() > 300, au
    with pytest.raises(ValueError, match="AU99"):
        render_face({"AU99": 1.0})


# ---------------------------------------------------------------- learnable but overlapping


def _pixels_24(images: np.ndarray) -> np.ndarray:
    n = len(images)
    x = images.reshape(n, 24, 2, 24, 2).mean(axis=(2, 4)).reshape(n, -1).astype(np.float64)
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


def test_classes_learnable_but_overlapping():
    """A linear probe on 24x24 pixels beats chance (1/7) by far but is not perfect."""
    linear = pytest.importorskip("sklearn.linear_model")
    data = generate_images(SyntheticConfig(n_valid=0))  # default train/test sizes, seed 0
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    clf = linear.RidgeClassifier(alpha=100.0).fit(_pixels_24(xtr), ytr)
    acc = clf.score(_pixels_24(xte), yte)
    assert 0.5 < acc < 0.98, acc
    # the overlap is where it should be: some confusion of fear with surprise
    pred = clf.predict(_pixels_24(xte))
    fear = yte == int(Emotion.FEAR)
    assert (pred[fear] == int(Emotion.SURPRISE)).any()


# ---------------------------------------------------------------- on disk


def test_write_layout_png_and_idempotent(tmp_path, small_data):
    root = tmp_path / "synthetic"
    assert write_synthetic(root, SMALL) == root
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["config"] == SMALL.to_dict()
    assert meta["content_hash"] == content_hash(small_data)

    for split, (images, labels) in small_data.items():
        dirs = sorted(p.name for p in (root / split).iterdir())
        assert dirs == sorted(e.label for e in BASIC7)
        for i in (0, len(labels) - 1):
            path = root / split / Emotion(int(labels[i])).label / f"{split}_{i:05d}.png"
            with Image.open(path) as img:
                assert img.format == "PNG" and img.mode == "L" and img.size == (48, 48)
                np.testing.assert_array_equal(np.asarray(img), images[i])
        assert len(list((root / split).glob("*/*.png"))) == len(labels)
        assert meta["counts"][split] == {e.label: len(labels) // 7 for e in BASIC7}

    # second call: nothing rewritten
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert write_synthetic(root, SyntheticConfig(**SMALL.to_dict())) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic"]  # no temp dirs left


def test_config_mismatch_error_and_overwrite(tmp_path):
    root = tmp_path / "syn"
    write_synthetic(root, SMALL)
    other = SyntheticConfig(n_train=14, n_valid=7, n_test=7, seed=3)
    with pytest.raises(ValueError, match=re.escape(str(root / "synthetic.json"))):
        write_synthetic(root, other)
    assert json.loads((root / "synthetic.json").read_text())["config"] == SMALL.to_dict()

    write_synthetic(root, other, overwrite=True)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["config"] == other.to_dict()
    assert len(list(root.glob("train/*/*.png"))) == 14  # old files gone
    assert [p.name for p in tmp_path.iterdir()] == ["syn"]


def test_refuses_foreign_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        write_synthetic(root, SMALL, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"


def test_killed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*_args, **_kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(syn, "content_hash", boom)  # fails after the PNGs are written
    with pytest.raises(KeyboardInterrupt):
        write_synthetic(tmp_path / "syn", SMALL)
    assert list(tmp_path.iterdir()) == []


def test_cli_and_preview(tmp_path, capsys):
    root = tmp_path / "cli"
    args = ["--root", str(root), "--seed", "1", "--n-train", "14", "--n-valid", "7", "--n-test", "7"]
    assert syn.main(args) == 0
    assert "28 images" in capsys.readouterr().out
    assert json.loads((root / "synthetic.json").read_text())["config"]["seed"] == 1
    assert syn.main(args[:3] + ["2"] + args[4:]) == 2  # different seed, no --overwrite
    assert "synthetic.json" in capsys.readouterr().err

    path = save_preview(tmp_path / "preview.png", SyntheticConfig(seed=1), per_class=4, scale=1)
    with Image.open(path) as img:
        assert img.mode == "L"
        assert img.size == (4 * 50 + 2, 7 * 50 + 2)


def test_ensure_synthetic_rewrites_an_older_generator_version_only(tmp_path):
    root = tmp_path / "syn"
    custom = SyntheticConfig(n_train=14, n_valid=7, n_test=7, image_size=16)
    write_synthetic(root, custom)
    before = (root / "synthetic.json").read_text()
    assert syn.ensure_synthetic(root) == root  # this version, any size: used as it is
    assert (root / "synthetic.json").read_text() == before
    # a set from generator version 1 (balanced; no class_shares field) is rewritten from its own config
    meta = json.loads(before)
    meta["version"] = 1
    del meta["config"]["class_shares"]
    (root / "synthetic.json").write_text(json.dumps(meta))
    syn.ensure_synthetic(root)
    meta = json.loads((root / "synthetic.json").read_text())
    assert meta["version"] == syn.GENERATOR_VERSION
    assert meta["config"]["n_train"] == 14 and meta["config"]["image_size"] == 16
    assert meta["config"]["class_shares"] == list(syn.FERPLUS_TRAIN_SHARES)
    assert syn.ensure_synthetic(tmp_path / "fresh", seed=2) == tmp_path / "fresh"
    assert json.loads((tmp_path / "fresh" / "synthetic.json").read_text())["config"]["seed"] == 2
