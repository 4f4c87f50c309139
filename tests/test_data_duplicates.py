"""Duplicate images: the finder (exact and near copies, label conflicts, per split pair) and the
``dedupe`` data option that drops duplicate evaluation rows (``ferlib.data.duplicates``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlib.data import DataError
from ferlib.data.duplicates import (
    DROP_REASONS,
    NEAR_THRESHOLD,
    dedupe_evaluation,
    find_duplicates,
    format_report,
    hamming,
    hash_images,
    phash,
    pixel_digest,
)
from ferlib.data.prepare import dataset_options, dedupe_mode, effective_data_options, load_splits
from ferlib.data.synthetic import _draw_identities, render_face
from ferlib.emotions import Emotion

SIZE = 16
#: FERPlus vote rows (ten counts) whose majority is the named emotion
VOTES = {
    Emotion.NEUTRAL: [10, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    Emotion.HAPPINESS: [0, 10, 0, 0, 0, 0, 0, 0, 0, 0],
    Emotion.SURPRISE: [0, 0, 10, 0, 0, 0, 0, 0, 0, 0],
}
DIRS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}


def _images(n: int, seed: int) -> np.ndarray:
    """``n`` distinct random gray images ``(n, 1, SIZE, SIZE)``."""
    return np.random.default_rng(seed).integers(0, 256, (n, 1, SIZE, SIZE), dtype=np.uint8)


def _jpeg(image: np.ndarray, quality: int = 75) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf))


@pytest.fixture
def splits() -> dict:
    """Three splits with planted copies (rows named in each test) and their labels."""
    train, valid, test = _images(6, 0), _images(4, 1), _images(5, 2)
    valid[0] = train[1]  # valid-train copy
    test[0] = train[2]  # test-train copy
    test[1] = valid[2]  # test-valid copy
    test[4] = test[3]  # a repeat inside test
    train[5] = train[4]  # a repeat inside train
    labels = {
        "train": np.array([0, 1, 2, 0, 1, 1]),
        "valid": np.array([1, 0, 2, 0]),
        "test": np.array([2, 2, 1, 0, 0]),
    }
    return {"images": {"train": train, "valid": valid, "test": test}, "labels": labels}


# ----------------------------------------------------------------------------- the finder
def test_exact_copies_are_found_across_and_inside_splits(splits):
    report = find_duplicates(splits["images"], splits["labels"], near_threshold=None)
    groups = {tuple(g.members) for g in report.exact_groups}
    assert groups == {
        (("train", 1), ("valid", 0)),
        (("train", 2), ("test", 0)),
        (("valid", 2), ("test", 1)),
        (("test", 3), ("test", 4)),
        (("train", 4), ("train", 5)),
    }
    one_each = {"rows_a": 1, "rows_b": 1, "groups": 1, "extra": 0}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert {k: getattr(report.pair(a, b), k) for k in one_each} == one_each
    inside = report.pair("test", "test")
    assert (inside.rows_a, inside.groups, inside.extra) == (2, 1, 1)
    assert report.pair("valid", "valid").groups == 0
    assert report.pair("test", "train").rows_a == report.pair("train", "test").rows_b  # either order
    assert report.by_class["train-test"][2] == [1, 1, 2]  # test label 2: 1 of 2 rows copied, same label
    assert "train-test" in format_report(report)


def test_label_conflicts_are_groups_with_different_labels(splits):
    report = find_duplicates(splits["images"], splits["labels"], near_threshold=None)
    conflicting = {tuple(g.members): g.labels for g in report.conflicts}
    # train 2 (label 2) = test 0 (label 2): none; train 1 (1) = valid 0 (1): none;
    # valid 2 (2) = test 1 (2): none; test 3 (0) = test 4 (0): none; train 4 (1) = train 5 (1): none
    assert conflicting == {}
    labels = {k: v.copy() for k, v in splits["labels"].items()}
    labels["test"][0] = 0  # now train 2 says 2, its copy test 0 says 0
    report = find_duplicates(splits["images"], labels, near_threshold=None)
    assert [(tuple(g.members), g.labels) for g in report.conflicts] == [((("train", 2), ("test", 0)), [2, 0])]
    assert report.pair("train", "test").conflicts == 1
    assert report.pair("valid", "test").conflicts == 0
    assert report.to_dict()["conflicts"] == [[["train", 2, 2], ["test", 0, 0]]]


def test_exact_digest_is_of_decoded_pixels_not_file_bytes(tmp_path):
    image = _images(1, 3)[0, 0]
    Image.fromarray(image).save(tmp_path / "a.png", compress_level=0)
    Image.fromarray(image).save(tmp_path / "b.png", compress_level=9)
    Image.fromarray(np.stack([image] * 3, axis=-1)).save(tmp_path / "c.png")  # gray saved as RGB
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()
    decoded = [np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png", "c.png")]
    assert len({pixel_digest(d) for d in decoded}) == 1
    other = image.copy()
    other[0, 0] ^= 1  # one grey level of one pixel
    assert pixel_digest(other) != pixel_digest(image)
    with pytest.raises(ValueError, match="uint8"):
        pixel_digest(image.astype(np.float32))


def _face(identity: np.ndarray, seed: int) -> np.ndarray:
    return render_face({}, size=48, identity=identity, seed=seed)


def test_near_threshold_catches_a_brightened_reencoded_copy_but_not_another_face():
    people = _draw_identities(np.random.default_rng(0), 2)
    face, other = _face(people[0], 0), _face(people[1], 1)
    brightened = np.clip(face.astype(np.int16) + 25, 0, 255).astype(np.uint8)
    copies = [_jpeg(face), _jpeg(brightened), np.clip(face * 1.15 - 10, 0, 255).astype(np.uint8)]
    h = phash(np.stack([face, other, *copies])[:, None])
    assert all(hamming(h[0], h[k]) <= NEAR_THRESHOLD for k in range(2, len(h)))
    assert hamming(h[0], h[1]) > NEAR_THRESHOLD
    assert all(pixel_digest(c) != pixel_digest(face) for c in copies)  # near copies, not exact ones

    report = find_duplicates({"train": [face, other], "test": [copies[1]]}, {"train": [0, 1], "test": [1]})
    assert report.pair("train", "test").rows_b == 0  # no exact copy
    near = report.pair("train", "test", kind="near")
    assert (near.rows_a, near.rows_b, near.groups, near.conflicts) == (1, 1, 1, 1)
    assert [g.members for g in report.near_groups] == [[("train", 0), ("test", 0)]]


def test_hashes_of_a_cache_equal_those_of_single_images(splits):
    batch = splits["images"]["test"]
    a = hash_images(batch)
    b = hash_images([image[0] for image in batch])
    assert a.digests.tolist() == b.digests.tolist() and a.phashes.tolist() == b.phashes.tolist()
    colour = np.repeat(batch, 3, axis=1)  # a colour cache of gray images: the same pictures
    assert hash_images(colour).digests.tolist() == a.digests.tolist()


# ----------------------------------------------------------------------------- dropping rows
def test_dedupe_drops_exactly_the_evaluation_rows_it_must(splits):
    h = {split: hash_images(images) for split, images in splits["images"].items()}
    result = dedupe_evaluation(h["train"], h["test"], h["valid"])
    assert set(result.keep) == {"test", "valid"}  # training rows are never candidates
    # test 0 copies train 2; test 4 repeats test 3 (the first, test 3, stays); test 1 copies
    # valid 2, and the test split wins over the tuning rows: it stays, valid 2 goes
    assert result.kept_rows("test").tolist() == [1, 2, 3]
    assert result.reasons["test"].tolist() == ["train", "", "", "", "repeat"]
    assert result.kept_rows("valid").tolist() == [1, 3]
    assert result.reasons["valid"].tolist() == ["train", "", "test", ""]


def test_remap_keeps_the_count_arithmetic(splits):
    h = {split: hash_images(images) for split, images in splits["images"].items()}
    result = dedupe_evaluation(h["train"], h["test"], h["valid"])
    for split, c in result.counts().items():
        n = len(splits["images"][split])
        assert c["before"] == n == c["kept"] + c["dropped"]
        assert sum(c[f"dropped_{r}"] for r in DROP_REASONS) == c["dropped"]
        remap = result.remap(split)
        assert np.flatnonzero(remap >= 0).tolist() == result.kept_rows(split).tolist()
        assert remap[remap >= 0].tolist() == list(range(c["kept"]))
        assert int((remap < 0).sum()) == c["dropped"]
    summary = result.summary()
    assert summary["mode"] == "exact" and summary["test"] == result.counts()["test"]


def test_near_mode_also_drops_near_copies():
    people = _draw_identities(np.random.default_rng(0), 3)
    faces = np.stack([_face(p, k) for k, p in enumerate(people)])[:, None]
    copy = np.clip(faces[0].astype(np.int16) + 25, 0, 255).astype(np.uint8)
    h = {
        "train": hash_images(faces[:2]),
        "test": hash_images(np.stack([copy, faces[2], faces[2]])),
    }
    exact = dedupe_evaluation(h["train"], h["test"])
    near = dedupe_evaluation(h["train"], h["test"], mode="near")
    assert exact.reasons["test"].tolist() == ["", "", "repeat"]
    assert near.reasons["test"].tolist() == ["near-train", "", "repeat"]
    assert near.threshold == NEAR_THRESHOLD and exact.threshold is None
    with pytest.raises(ValueError, match="dedupe mode"):
        dedupe_evaluation(h["train"], h["test"], mode="off")


# ----------------------------------------------------------------------------- the data option
def _write_ferplus(root: Path, rows: dict[str, list[tuple[np.ndarray, Emotion]]]) -> Path:
    """A FERPlus layout with the given pixels and majority labels."""
    for split, entries in rows.items():
        folder = root / DIRS[split]
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for k, (pixels, emotion) in enumerate(entries):
            name = f"{split}{k:04d}.png"
            Image.fromarray(pixels).save(folder / name)
            lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(map(str, VOTES[emotion])))
        (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def ferplus_copies(tmp_path) -> dict:
    """A tiny FERPlus with planted copies. Training: 12 images, classes in turn (neutral,
    happiness, surprise), surprise row 8 a copy of neutral row 0 and surprise row 11 a repeat of
    surprise row 5. Test: rows 0 and 1 copy training rows (1 an open-class one), row 3 repeats
    row 2. Validation: row 0 copies a training row, row 1 a test row."""
    classes = [Emotion.NEUTRAL, Emotion.HAPPINESS, Emotion.SURPRISE]
    pool = _images(30, 7)[:, 0]
    train = [(pool[k], classes[k % 3]) for k in range(12)]
    train[8] = (pool[0], Emotion.SURPRISE)  # same picture as row 0, another label
    train[11] = (pool[5], Emotion.SURPRISE)
    test = [(pool[12 + k], classes[k % 3]) for k in range(6)]
    test[0] = (pool[0], Emotion.NEUTRAL)
    test[1] = (pool[2], Emotion.SURPRISE)
    test[3] = (pool[14], Emotion.NEUTRAL)  # test 2's picture under another label
    valid = [(pool[20 + k], classes[k % 3]) for k in range(6)]
    valid[0] = (pool[4], Emotion.HAPPINESS)
    valid[1] = (pool[16], Emotion.HAPPINESS)  # test 4's picture
    root = _write_ferplus(tmp_path / "ferplus", {"train": train, "valid": valid, "test": test})
    return {
        "root": root,
        "n": {"train": 12, "valid": 6, "test": 6},
        "dropped": {"test": 3, "valid": 2},
        "open_train": {"before": [2, 5, 8, 11], "after": [2, 5]},  # surprise open
    }


def _load(root: Path, open_class: str | None = "surprise", **options) -> object:
    return load_splits("ferplus", str(root), open_class, SIZE, cache_dir=None, data_options=options or None)


def test_ferplus_drops_duplicate_evaluation_rows_by_default_and_keeps_every_training_row(ferplus_copies, capsys):
    n, dropped, open_train = ferplus_copies["n"], ferplus_copies["dropped"], ferplus_copies["open_train"]
    s = _load(ferplus_copies["root"])
    off = _load(ferplus_copies["root"], dedupe=False)
    out = capsys.readouterr().out
    assert "duplicate evaluation rows dropped" in out and "dedupe" in out
    assert len(off.test) == n["test"] and len(off.valid) == n["valid"] and off.dedupe is None
    assert len(s.test) == n["test"] - dropped["test"] and len(s.valid) == n["valid"] - dropped["valid"]
    # no training row dropped: the cache, and the close rows the model trains on
    assert len(s.train) == len(off.train) == n["train"] and s.train.paths == off.train.paths
    assert s.split.train_index.tolist() == off.split.train_index.tolist()
    assert s.training()[0].tolist() == off.training()[0].tolist()
    # the open class's training rows are evaluation rows: a copy of a close one and a repeat go
    assert off.split.eval_train_index.tolist() == open_train["before"]
    assert s.split.eval_train_index.tolist() == open_train["after"]
    n_open_dropped = len(open_train["before"]) - len(open_train["after"])
    assert s.split.n_eval == off.split.n_eval - dropped["test"] - n_open_dropped
    assert len(s.split.eval_labels) == s.split.n_eval
    assert len(s.tuning_rows()) == len(off.tuning_rows()) - dropped["valid"]
    counts = s.dedupe
    assert counts["mode"] == "exact"
    for part in ("test", "valid", "open_train"):
        assert counts[part]["before"] == counts[part]["kept"] + counts[part]["dropped"]
    assert counts["test"]["before"] == n["test"]
    assert (counts["test"]["dropped_train"], counts["test"]["dropped_repeat"]) == (2, 1)
    assert (counts["valid"]["dropped_train"], counts["valid"]["dropped_test"]) == (1, 1)
    assert (counts["open_train"]["dropped_train"], counts["open_train"]["dropped_repeat"]) == (1, 1)
    # the kept rows are the loader's rows they were, and each picture is evaluated once
    assert set(s.test.paths) <= set(off.test.paths)
    train_digests = hash_images(s.train.images).digests
    test_digests = hash_images(s.test.images).digests.tolist()
    assert not set(train_digests.tolist()) & set(test_digests)
    evaluated = test_digests + train_digests[s.split.eval_train_index].tolist()
    assert len(set(evaluated)) == len(evaluated)
    assert s.fingerprint != off.fingerprint


def test_close_set_runs_keep_the_test_split_unless_asked(ferplus_copies):
    n, dropped = ferplus_copies["n"], ferplus_copies["dropped"]
    assert len(_load(ferplus_copies["root"], None).test) == n["test"]
    asked = _load(ferplus_copies["root"], None, dedupe=True)
    assert len(asked.test) == n["test"] - dropped["test"] and len(asked.train) == n["train"]
    assert "open_train" not in asked.dedupe  # no open class: every training row is trained on


def test_the_dedupe_option_is_resolved_recorded_and_checked(ferplus_copies, tmp_path):
    assert dedupe_mode("ferplus", "surprise") == "exact"
    assert dedupe_mode("ferplus", None) == "off"
    assert dedupe_mode("synthetic", "surprise") == "off"
    assert dedupe_mode("rafdb", "fear", {"dedupe": True}) == "exact"
    assert dedupe_mode("ferplus", "fear", {"dedupe": "near"}) == "near"
    assert effective_data_options("ferplus", "surprise", None) == {"dedupe": True}
    assert effective_data_options("ferplus", "surprise", {"dedupe": False}) == {"dedupe": False}
    assert effective_data_options("synthetic", "surprise", None) is None
    root = ferplus_copies["root"]
    with pytest.raises(DataError, match=r"dedupe.*'yes'") as err:
        dataset_options("ferplus", root, data_options={"dedupe": "yes"})
    assert str(root) in str(err.value)
    with pytest.raises(DataError, match="takes no option 'dedup'.*dedupe"):
        dataset_options("ferplus", root, data_options={"dedup": True})
    assert "dedupe" not in dataset_options("ferplus", root, data_options={"dedupe": False})  # not a loader option


def test_runner_keys_tell_runs_with_and_without_dedupe_apart():
    from ferlib.run import STAGES, stage_key

    stage = STAGES[0]
    base = {"dataset": "ferplus", "open_class": "surprise", "data_root": "x", "seed": 0}
    on = stage.applied(base)
    off = stage.applied({**base, "data_options": {"dedupe": False}})
    assert on["data_options"] == {"dedupe": True}
    assert stage_key(stage, on, None) != stage_key(stage, off, None)
    assert stage_key(stage, on, None) == stage_key(
        stage, stage.applied({**base, "data_options": {"dedupe": True}}), None
    )
    assert stage.applied({**base, "dataset": "synthetic"})["data_options"] is None  # other sets' keys unchanged


# ----------------------------------------------------------------------------- the real data
@pytest.mark.ferplus
def test_ferplus_dedupe_drops_test_rows_and_no_training_row(ferplus_root, tmp_path):
    cache = str(tmp_path / "cache")
    s = load_splits("ferplus", str(ferplus_root), "surprise", 48, cache_dir=cache)
    off = load_splits("ferplus", str(ferplus_root), "surprise", 48, cache_dir=cache, data_options={"dedupe": False})
    assert s.dedupe["test"]["dropped"] > 0 and len(s.test) < len(off.test)
    assert s.dedupe["test"]["before"] == len(off.test) == s.dedupe["test"]["kept"] + s.dedupe["test"]["dropped"]
    assert len(s.train) == len(off.train) and s.train.paths == off.train.paths
    assert s.split.train_index.tolist() == off.split.train_index.tolist()  # the rows the model trains on
    assert set(s.split.eval_train_index.tolist()) <= set(off.split.eval_train_index.tolist())
    train = hash_images(s.train.images).digests
    kept = hash_images(s.test.images).digests.tolist()
    assert not set(train.tolist()) & set(kept)
    evaluated = kept + train[s.split.eval_train_index].tolist()
    assert len(set(evaluated)) == len(evaluated)  # each picture once in the evaluation set


def test_the_report_command_prints_counts_and_refuses_a_missing_root(ferplus_copies, tmp_path, capsys):
    from ferlib.data.duplicates import main

    out_json = tmp_path / "report.json"
    assert main([str(ferplus_copies["root"]), "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "train-test" in out and "duplicate evaluation rows dropped" in out and "open class" in out
    n = ferplus_copies["n"]
    assert f"test {n['test']} -> {n['test'] - ferplus_copies['dropped']['test']} rows" in out
    assert out_json.is_file()
    assert main([str(tmp_path / "absent")]) == 2
    assert "absent" in capsys.readouterr().err
